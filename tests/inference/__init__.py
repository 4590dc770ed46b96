"""Tests of medssl.inference."""

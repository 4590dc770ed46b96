"""Tests of medssl.preprocess."""

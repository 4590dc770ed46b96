"""Tests of the HTTP inference service (medssl.inference.server)."""

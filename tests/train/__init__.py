"""Tests of the train stage."""

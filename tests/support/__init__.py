"""Helpers the tests share (not tests): independent references, tiny data, processes, ports."""

"""Splats: the type, its parameter conversions and its byte format."""
from .types import Splats, SplatsError
from .format import FormatError, decode, encode, load, save, read_header

__all__ = ["Splats", "SplatsError", "FormatError", "encode", "decode", "save", "load", "read_header"]

"""Bytes -> frames: OpenCV-exact image decoding (`decode`) with the pixel limit checked on the header
first (`header`), EXIF orientation as the installed OpenCV applies it (`exif`), one error type per
fault (`errors`), and optional JPEG decoding on a torch device (`gpu`, nvJPEG on CUDA: not exact).
"""

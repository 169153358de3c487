"""Bytes -> frames: OpenCV-exact image decoding with pixel limits checked before decoding and EXIF
orientation as the installed OpenCV applies it (`decode`), and optional JPEG decoding on a torch
device (`gpu`, nvJPEG on CUDA: not exact).
"""

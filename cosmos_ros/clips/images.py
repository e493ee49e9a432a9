"""Moved to :mod:`cosmos_ros.images`, the one image module of the clip builder and the predictor.

Kept as a re-export so that imports written against the old place keep working."""

from cosmos_ros.images import FIT_POLICIES, ImageError, decode_image, fit_image

RESIZE_POLICIES = FIT_POLICIES  # the clip builder's name for the fit policies

__all__ = ["RESIZE_POLICIES", "ImageError", "decode_image", "fit_image"]

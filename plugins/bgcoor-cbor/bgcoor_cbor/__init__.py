"""CBOR (RFC 8949) messages for bg-coor: ``BGCOOR_SERIALIZER=cbor``.

Installed as its own distribution (``pip install bgcoor-cbor``); bg-coor finds it through
the ``bgcoor`` entry-point group (``bgcoor_cbor._plugin``). Rich values travel in standard
CBOR tags where one carries them exactly and in this plugin's own tags otherwise
(:mod:`bgcoor_cbor._tags`, the README's wire format).
"""

from __future__ import annotations

from ._serializer import CONTENT_TYPE, CborSerializer

__all__ = ["CONTENT_TYPE", "CborSerializer"]

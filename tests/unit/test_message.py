"""The change message contract: canonical row JSON, fingerprints, decoding and refusals."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import pytest

from facusync.message import (
    MessageError,
    RowEncoder,
    decode,
    delete_fields,
    encode_row,
    fingerprint,
    upsert_fields,
)

ROW = {
    "conduce": "C-0001", "fecha_emision": datetime(2026, 11, 27, 8, 30, 0, 997000),
    "facturado": True, "numero_factura": None, "codigo_cliente": "CL-9",
    "cliente": "Ferretería Núñez, S.R.L.", "monto": Decimal("1234.50"), "cantidad": 7,
    "ultima_modificacion": datetime(2026, 11, 27, 9, 0),
}


def test_row_json_is_canonical_and_exact() -> None:
    text = encode_row(ROW)
    data = json.loads(text)
    assert list(data) == sorted(ROW)
    assert data["monto"] == "1234.50" and data["facturado"] is True and data["numero_factura"] is None
    assert data["fecha_emision"] == "2026-11-27T08:30:00.997000"
    assert data["ultima_modificacion"] == "2026-11-27T09:00:00.000000"
    assert "Ferretería Núñez" in text  # not \\u-escaped


def test_fast_encoder_matches_the_reference() -> None:
    names = list(ROW)
    encoder = RowEncoder(names)
    assert encoder.encode([ROW[n] for n in names]) == encode_row(ROW)
    with pytest.raises(MessageError):
        encoder.encode([object()] + [None] * (len(names) - 1))


def test_fingerprint_changes_with_any_value() -> None:
    base = fingerprint(encode_row(ROW))
    assert base == fingerprint(encode_row(dict(ROW)))
    assert base != fingerprint(encode_row({**ROW, "monto": Decimal("1234.5")}))
    assert base != fingerprint(encode_row({**ROW, "facturado": False}))


def test_round_trip_and_refusals() -> None:
    fields = upsert_fields("C-0001", ROW["ultima_modificacion"], encode_row(ROW), "2026-11-27T08:00:00")
    change = decode("1-0", {k.encode(): v.encode() for k, v in fields.items()})
    assert change.op == "upsert" and change.key == "C-0001" and change.row == json.loads(encode_row(ROW))
    assert change.low_water == datetime(2026, 11, 27, 8)
    tomb = decode("2-0", delete_fields("C-0001", "2026-11-27T09:00:00", ""))
    assert tomb.op == "delete" and tomb.row is None and tomb.low_water is None
    assert decode("2-1", {**fields, "expect": "2026-11-27T07:00:00"}).expect == datetime(2026, 11, 27, 7)
    bad = [({**fields, "v": "2"}, "unknown message format version"),
           ({**fields, "op": "merge"}, "unknown op"),
           ({**fields, "key": ""}, "missing or empty key"),
           ({**fields, "version": "yesterday"}, "not an ISO 8601"),
           ({**fields, "version": "2026-11-27T09:00:00+00:00"}, "carries an offset"),
           ({**fields, "row": "{not json"}, "not valid JSON"),
           ({**fields, "row": "[1]"}, "not a JSON object"),
           ({**fields, "lw": "soon"}, "lw 'soon' is not an ISO 8601"),
           ({**fields, "expect": "2026-13-01"}, "expect '2026-13-01' is not an ISO 8601")]
    for entry, reason in bad:
        with pytest.raises(MessageError, match=reason):
            decode("3-0", entry)

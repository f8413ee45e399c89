"""LIS export: ORU^R01 content (parsed back with hl7apy), CSV, and MLLP against a real
listener on loopback (hl7apy's MLLPServer) that acknowledges, NAKs, rejects or drops."""

from __future__ import annotations

import csv
import io
import threading

import pytest
from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

from device import lis
from device.errors import ExportError

RESULT = {"format": "holodiff-result/1", "wbc_per_uL": 12500.0, "cells_classified": 812,
          "differential_5part": {"neutrophil": 80.1, "lymphocyte": 12.0, "monocyte": 6.4,
                                 "eosinophil": 1.0, "basophil": 0.5},
          "differential_3part": {"lymphocyte": 12.0, "monocyte": 6.4, "granulocyte": 81.6},
          "mdw": {"sd_fl": 95.0, "cv_pct": 24.0, "mean_fl": 400.0, "n": 52},
          "flags": ["MDW_HIGH", "LOW_CONFIDENCE"],
          "flag_details": {"MDW_HIGH": "Monocyte volumes widely spread | sepsis screen positive",
                           "LOW_CONFIDENCE": "Many cells uncertain"},
          "model": {"name": "wbc5", "version": "1.0.0"}, "calibration": {"id": "cal-7"}}


def _oru(**kw):
    args = dict(test_uid="a" * 32, sample_id="S-77", patient_id="MRN^1", observed="2026-11-24T10:00:00Z",
                device_serial="HD-0001")
    args.update(kw)
    return lis.build_oru(RESULT, **args)


def test_oru_has_the_loinc_codes_units_flags_and_notes():
    msg = _oru()
    m = parse_message(msg, find_groups=True)
    assert m.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and m.msh.msh_12.to_er7() == "2.5.1"
    oo = m.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    assert oo.obr.obr_25.to_er7() == "F"
    obx = {o.obx.obx_3.obx_3_1.to_er7(): o.obx for o in oo.ORU_R01_OBSERVATION}
    assert set(obx) >= {"6690-2", "770-8", "736-9", "5905-5", "713-8", "706-2", "751-8", "731-0",
                        "742-7", "711-2", "704-7", "HD-MDW-SD", "HD-MDW-CV"}
    assert obx["6690-2"].obx_5.to_er7() == "12.5" and obx["6690-2"].obx_8.to_er7() == "H"
    assert obx["6690-2"].obx_6.to_er7() == "10*3/uL^^UCUM"
    assert obx["770-8"].obx_5.to_er7() == "80.1" and obx["770-8"].obx_8.to_er7() == "H"
    assert obx["751-8"].obx_5.to_er7() == "10.01"  # 12.5 x 80.1 %
    assert obx["736-9"].obx_8.to_er7() == "L"
    assert obx["HD-MDW-SD"].obx_3.obx_3_3.to_er7() == "L"  # local code
    assert all(o.obx_11.to_er7() == "F" for o in obx.values())
    notes = [n.nte_3.to_er7() for n in oo.NTE]
    assert notes[0].startswith("MDW_HIGH: ") and "\\F\\" in notes[0]  # '|' escaped
    # the patient ID's '^' is escaped, not taken as a component separator
    assert m.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.pid.pid_3.pid_3_1.to_er7() == "MRN\\S\\1"


def test_csv_export_round_trips():
    text = lis.csv_rows([{"uid": "u1", "sample_id": "S", "patient_id": None, "observed": "t",
                          "result": RESULT}])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["monocyte_pct"] == "6.4" and rows[0]["flags"] == "MDW_HIGH LOW_CONFIDENCE"


class _Lis:
    """A real MLLP listener whose answers follow a script: AA, AE, AR, drop, wrong-id."""

    def __init__(self, script):
        self.script = list(script)
        self.received = []
        outer = self

        class Handler(AbstractHandler):
            def reply(self):
                outer.received.append(self.incoming_message)
                what = outer.script.pop(0) if outer.script else "AA"
                if what == "drop":
                    raise ConnectionAbortedError("listener drops the connection")
                inc = parse_message(self.incoming_message)
                ack = Message("ACK", version="2.5.1")
                ack.msh.msh_3, ack.msh.msh_5 = "LIS", "HOLODIFF"
                ack.msh.msh_9 = "ACK^R01^ACK"
                ack.msh.msh_10 = "ack1"
                ack.msh.msh_11 = "P"
                ack.add_segment("MSA")
                ack.msa.msa_1 = what if what != "wrong-id" else "AA"
                ack.msa.msa_2 = "other" if what == "wrong-id" else inc.msh.msh_10.to_er7()
                if what in ("AE", "AR"):
                    ack.msa.msa_3 = "unknown patient"
                return "\x0b" + ack.to_er7() + "\x1c\x0d"

        self.server = MLLPServer("127.0.0.1", 0, {"ORU^R01^ORU_R01": (Handler,)}, timeout=5)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener():
    made = []

    def make(*script):
        made.append(_Lis(script))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_mllp_send_is_acknowledged(listener):
    srv = listener("AA")
    ack = lis.send_mllp(_oru(), "127.0.0.1", srv.port, sleep=lambda s: None)
    assert ack.accepted and ack.code == "AA"
    assert srv.received[0].startswith("MSH|^~\\&|HOLODIFF")


def test_mllp_retries_a_dropped_connection_and_an_error_ack(listener):
    srv = listener("drop", "AE", "wrong-id", "AA")
    waits = []
    ack = lis.send_mllp(_oru(), "127.0.0.1", srv.port, retries=3, sleep=waits.append)
    assert ack.code == "AA" and len(srv.received) == 4
    assert waits == [1.0, 2.0, 4.0]  # exponential back-off


def test_mllp_reject_is_not_retried(listener):
    srv = listener("AR")
    with pytest.raises(ExportError, match="rejected.*unknown patient"):
        lis.send_mllp(_oru(), "127.0.0.1", srv.port, sleep=lambda s: None)
    assert len(srv.received) == 1


def test_mllp_gives_up_with_the_last_reason(listener):
    srv = listener("drop", "drop", "drop")
    with pytest.raises(ExportError, match="after 3 attempts.*closed the connection"):
        lis.send_mllp(_oru(), "127.0.0.1", srv.port, retries=2, sleep=lambda s: None)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there
    with pytest.raises(ExportError, match="ConnectionRefused"):
        lis.send_mllp(_oru(), "127.0.0.1", port, retries=1, sleep=lambda s: None)

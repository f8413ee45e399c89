"""Export to the laboratory information system: CSV and HL7 v2.5.1 ORU^R01 over MLLP.

Messages are built and parsed with hl7apy (a maintained HL7 v2 library) and
validated against the 2.5.1 message structure before they leave the analyzer.
Codes (INTERFACES.md section 6): LOINC for the WBC count, the five percentages
and the five absolute counts; the MDW as the local codes ``HD-MDW-SD`` (fL) and
``HD-MDW-CV`` (%) until LOINC assigns one. Units are UCUM. Abnormal flags are
``H``/``L`` against adult reference intervals (:data:`REFERENCE`), and every QC
flag becomes an ``NTE`` with the operator's text.

MLLP framing (HL7 v2 Minimal Lower Layer Protocol): ``0x0B`` message ``0x1C 0x0D``.
The sender waits for the acknowledgement, checks that it names the message's
control id, and retries a dropped connection, a timeout or an ``AE`` (error)
acknowledgement with back-off; an ``AR`` (reject) is not retried.
"""

from __future__ import annotations

import csv
import io
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from device.errors import ExportError
from holography.sample import WBC_CLASSES as CLASSES
from inference.result import MDW_HIGH_CV_PCT, REFERENCE_PCT

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
PCT_LOINC = {"neutrophil": ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
             "lymphocyte": ("736-9", "Lymphocytes/100 leukocytes in Blood by Automated count"),
             "monocyte": ("5905-5", "Monocytes/100 leukocytes in Blood by Automated count"),
             "eosinophil": ("713-8", "Eosinophils/100 leukocytes in Blood by Automated count"),
             "basophil": ("706-2", "Basophils/100 leukocytes in Blood by Automated count")}
ABS_LOINC = {"neutrophil": ("751-8", "Neutrophils [#/volume] in Blood by Automated count"),
             "lymphocyte": ("731-0", "Lymphocytes [#/volume] in Blood by Automated count"),
             "monocyte": ("742-7", "Monocytes [#/volume] in Blood by Automated count"),
             "eosinophil": ("711-2", "Eosinophils [#/volume] in Blood by Automated count"),
             "basophil": ("704-7", "Basophils [#/volume] in Blood by Automated count")}
WBC_LOINC = ("6690-2", "Leukocytes [#/volume] in Blood by Automated count")
MDW_SD = ("HD-MDW-SD", "Monocyte distribution width (SD of monocyte volume)")
MDW_CV = ("HD-MDW-CV", "Monocyte distribution width (CV of monocyte volume)")
#: adult reference intervals (Dacie and Lewis Practical Haematology, 12th ed., table 2.1):
#: WBC and absolute counts in 10^3/uL, percentages in % (those the analysis's differential
#: prior is made of, inference.result.REFERENCE_PCT)
REFERENCE = {"wbc": (4.0, 11.0),
             **{f"{c}_pct": REFERENCE_PCT[c] for c in CLASSES},
             "neutrophil_abs": (2.0, 7.0), "lymphocyte_abs": (1.0, 3.0),
             "monocyte_abs": (0.2, 1.0), "eosinophil_abs": (0.02, 0.5), "basophil_abs": (0.0, 0.1)}

def _abn(value: float | None, key: str) -> str:
    if value is None:
        return ""
    lo, hi = REFERENCE[key]
    return "L" if value < lo else "H" if value > hi else "N"


def observations(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The reportable observations of a result: code, name, value, unit, range, flag."""
    obs = []
    wbc = result.get("wbc_per_uL")
    wbc_k = None if wbc is None else wbc / 1000.0
    if wbc_k is not None:
        obs.append({"code": WBC_LOINC[0], "name": WBC_LOINC[1], "system": "LN",
                    "value": round(wbc_k, 2), "unit": "10*3/uL", "range": "4.0-11.0",
                    "flag": _abn(wbc_k, "wbc")})
    d5 = result.get("differential_5part") or {}
    if result.get("cells_classified"):
        for c in CLASSES:
            pct = d5.get(c)
            if pct is None:
                continue
            lo, hi = REFERENCE[f"{c}_pct"]
            obs.append({"code": PCT_LOINC[c][0], "name": PCT_LOINC[c][1], "system": "LN",
                        "value": round(pct, 1), "unit": "%", "range": f"{lo:g}-{hi:g}",
                        "flag": _abn(pct, f"{c}_pct")})
        if wbc_k is not None:
            for c in CLASSES:
                v = wbc_k * d5.get(c, 0.0) / 100.0
                lo, hi = REFERENCE[f"{c}_abs"]
                obs.append({"code": ABS_LOINC[c][0], "name": ABS_LOINC[c][1], "system": "LN",
                            "value": round(v, 2), "unit": "10*3/uL", "range": f"{lo:g}-{hi:g}",
                            "flag": _abn(v, f"{c}_abs")})
    mdw = result.get("mdw") or {}
    if mdw.get("sd_fl") is not None:
        high = "MDW_HIGH" in result.get("flags", [])
        obs.append({"code": MDW_SD[0], "name": MDW_SD[1], "system": "L", "value": mdw["sd_fl"],
                    "unit": "fL", "range": "", "flag": "H" if high else "N"})
        obs.append({"code": MDW_CV[0], "name": MDW_CV[1], "system": "L", "value": mdw["cv_pct"],
                    "unit": "%", "range": f"<={MDW_HIGH_CV_PCT:g}", "flag": "H" if high else "N"})
    return obs


def _hl7_text(s: str) -> str:
    """Escape HL7 delimiters in free text (HL7 v2 section 2.7)."""
    return (s.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", " ").replace("\n", " "))


def _ts(iso: str | None) -> str:
    if not iso:
        return datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return iso.replace("-", "").replace(":", "").replace("T", "")[:14]


def build_oru(result: dict[str, Any], *, test_uid: str, sample_id: str,
              patient_id: str | None, observed: str | None, device_serial: str,
              control_id: str | None = None, flag_text: dict[str, str] | None = None,
              receiving: tuple[str, str] = ("LIS", "LAB")) -> str:
    """One ORU^R01 message (ER7 text, segments separated by CR) for one result.

    Raises
    ------
    ExportError
        If the message does not validate against HL7 v2.5.1.
    """
    from hl7apy.core import Message
    from hl7apy.exceptions import HL7apyException

    control_id = control_id or test_uid[:20]
    try:
        m = Message("ORU_R01", version="2.5.1")
        m.msh.msh_3 = "HOLODIFF"
        m.msh.msh_4 = _hl7_text(device_serial)
        m.msh.msh_5, m.msh.msh_6 = receiving
        m.msh.msh_7 = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        m.msh.msh_9 = "ORU^R01^ORU_R01"
        m.msh.msh_10 = control_id
        m.msh.msh_11 = "P"
        pr = m.add_group("ORU_R01_PATIENT_RESULT")
        pat = pr.add_group("ORU_R01_PATIENT")
        pat.pid.pid_1 = "1"
        pat.pid.pid_3 = f"{_hl7_text(patient_id or sample_id)}^^^^{'MR' if patient_id else 'SID'}"
        pat.pid.pid_5 = "^^^^^^U"
        oo = pr.add_group("ORU_R01_ORDER_OBSERVATION")
        oo.obr.obr_1 = "1"
        oo.obr.obr_2 = _hl7_text(sample_id)
        oo.obr.obr_3 = f"{test_uid}^HOLODIFF"
        oo.obr.obr_4 = "57021-8^CBC W Auto Differential panel - Blood^LN"
        oo.obr.obr_7 = _ts(observed)
        oo.obr.obr_25 = "F"
        texts = flag_text or result.get("flag_details") or {}
        for i, code in enumerate(result.get("flags", []), start=1):
            nte = oo.add_segment("NTE")
            nte.nte_1 = str(i)
            nte.nte_2 = "L"
            nte.nte_3 = _hl7_text(f"{code}: {texts.get(code, '')}".strip())
        for i, o in enumerate(observations(result), start=1):
            ob = oo.add_group("ORU_R01_OBSERVATION")
            ob.obx.obx_1 = str(i)
            ob.obx.obx_2 = "NM"
            ob.obx.obx_3 = f"{o['code']}^{_hl7_text(o['name'])}^{o['system']}"
            ob.obx.obx_5 = f"{o['value']}"
            ob.obx.obx_6 = f"{o['unit']}^^UCUM"
            if o["range"]:
                ob.obx.obx_7 = o["range"]
            if o["flag"]:
                ob.obx.obx_8 = o["flag"]
            ob.obx.obx_11 = "F"
        m.validate()
        return m.to_er7()
    except HL7apyException as exc:
        raise ExportError(f"HL7 message for test {test_uid} does not validate ({exc}); "
                          f"report this to service") from None


CSV_FIELDS = ("test_uid", "sample_id", "patient_id", "observed", "wbc_per_uL",
              *(f"{c}_pct" for c in CLASSES), "granulocyte_pct", "mdw_sd_fl", "mdw_cv_pct",
              "cells_classified", "flags", "model", "calibration")


def csv_rows(items: list[dict[str, Any]]) -> str:
    """CSV text (header + one row per item ``{uid, sample_id, patient_id, observed, result}``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for it in items:
        r = it["result"]
        d5 = r.get("differential_5part") or {}
        mdw = r.get("mdw") or {}
        w.writerow({"test_uid": it["uid"], "sample_id": it["sample_id"],
                    "patient_id": it.get("patient_id") or "", "observed": it.get("observed") or "",
                    "wbc_per_uL": r.get("wbc_per_uL"),
                    **{f"{c}_pct": d5.get(c) for c in CLASSES},
                    "granulocyte_pct": (r.get("differential_3part") or {}).get("granulocyte"),
                    "mdw_sd_fl": mdw.get("sd_fl"), "mdw_cv_pct": mdw.get("cv_pct"),
                    "cells_classified": r.get("cells_classified"),
                    "flags": " ".join(r.get("flags", [])),
                    "model": f"{(r.get('model') or {}).get('name')} "
                             f"{(r.get('model') or {}).get('version')}",
                    "calibration": (r.get("calibration") or {}).get("id")})
    return buf.getvalue()


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """An HL7 acknowledgement: ``code`` is MSA-1 (AA, AE, AR, CA, CE, CR)."""

    code: str
    control_id: str
    text: str

    @property
    def accepted(self) -> bool:
        """Whether the receiver took the message."""
        return self.code in ("AA", "CA")


def frame(message: str) -> bytes:
    """MLLP-frame an ER7 message."""
    return VT + message.encode("utf-8") + FS + CR


def parse_ack(data: bytes) -> Ack:
    """Parse an MLLP-framed (or bare) ACK.

    Raises
    ------
    ExportError
        If it is not an HL7 message with an MSA segment.
    """
    text = data.strip(VT + FS + CR + b"\n").decode("utf-8", errors="replace")
    segs = {s.split("|", 1)[0]: s.split("|") for s in text.replace("\n", "\r").split("\r") if s}
    if "MSH" not in segs or "MSA" not in segs or len(segs["MSA"]) < 3:
        raise ExportError("the LIS answered something that is not an HL7 acknowledgement; "
                          "check the LIS address and port")
    msa = segs["MSA"]
    return Ack(code=msa[1], control_id=msa[2], text=msa[3] if len(msa) > 3 else "")


def _exchange(message: str, host: str, port: int, timeout_s: float) -> Ack:
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.settimeout(timeout_s)
        s.sendall(frame(message))
        buf = b""
        while FS + CR not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("the LIS closed the connection before acknowledging")
            buf += chunk
            if len(buf) > 1 << 20:
                raise ExportError("the LIS sent more than 1 MiB without an MLLP end; check the port")
        return parse_ack(buf[buf.find(VT):buf.find(FS + CR) + 2])


def send_mllp(message: str, host: str, port: int, *, timeout_s: float = 10.0, retries: int = 3,
              backoff_s: float = 1.0, sleep=time.sleep) -> Ack:
    """Send one message over MLLP and wait for its acknowledgement, with retries.

    Returns
    -------
    Ack
        The accepting acknowledgement.

    Raises
    ------
    ExportError
        Rejected (AR/CR), or no accepting acknowledgement after ``retries`` attempts
        (connection refused or dropped, timeout, AE/CE), with the last reason.
    """
    control = message.split("\r", 1)[0].split("|")[9]
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        try:
            ack = _exchange(message, host, port, timeout_s)
        except (OSError, ConnectionError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            continue
        if ack.control_id != control:
            last = f"acknowledgement names message {ack.control_id!r}, not {control!r}"
            continue
        if ack.accepted:
            return ack
        if ack.code in ("AR", "CR"):
            raise ExportError(f"the LIS rejected the result ({ack.code}: {ack.text or 'no reason'});"
                              f" check the patient and sample IDs with the laboratory")
        last = f"{ack.code}: {ack.text or 'no reason'}"
    raise ExportError(f"the LIS at {host}:{port} did not accept the result after {retries + 1} "
                      f"attempts ({last}); the result stays stored, send it again later")

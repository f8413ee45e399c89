"""Signed model bundles, ``holodiff-model/1`` (INTERFACES.md section 5).

A bundle ``NAME-VERSION.hdmodel`` is an uncompressed tar archive holding
``manifest.json``, ``manifest.sig`` (Ed25519 over the exact bytes of the
manifest), ``model.onnx``, ``card.json`` (the model card) and
``golden/results.json`` (what this model must reproduce on the golden capture
set). The manifest lists the SHA-256 of every other file, so the signature
covers them all.

Reading a bundle (:func:`read_bundle`) refuses, with a one-line reason: a file
that is not a tar archive or is truncated, an archive or member above the size
limits, any member that is not a plain file, has an absolute path or ``..``,
or is not one of the names above, a duplicate member, a signature that does
not verify with a key of the trust store (``hardware/keys/*.pub``), a
manifest that is not ``holodiff-model/1``, and a file whose hash differs from
the manifest's (a swapped model, mix-and-match). The order of checks follows
The Update Framework's advice (Samuel et al., "Survivable key compromise in
software update systems", CCS 2010): nothing inside the archive is trusted, or
even parsed beyond the tar headers, before the manifest's signature verifies.

Keys are Ed25519 (the ``cryptography`` package): ``holodiff model keygen``
writes the private key (PEM, mode 0600; never into the repository) and its
public half for the trust store. A key's id is the first 16 hex digits of the
SHA-256 of its raw public bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference.classify import ModelError

FORMAT = "holodiff-model/1"
MANIFEST, SIGNATURE, MODEL, CARD, GOLDEN = ("manifest.json", "manifest.sig", "model.onnx",
                                            "card.json", "golden/results.json")
MEMBERS = (MANIFEST, SIGNATURE, MODEL, CARD, GOLDEN)
#: the largest archive and member accepted (a model must stay under 5 MB)
MAX_ARCHIVE_BYTES = 8 << 20
MAX_MEMBER_BYTES = 6 << 20
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


class BundleError(ModelError, ValueError):
    """A model bundle is malformed, not signed by a trusted key, or does not match its manifest."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """A verified bundle: its manifest, the key that signed it, and its files' bytes."""

    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    key_id: str
    files: dict[str, bytes]

    @property
    def name(self) -> str:
        """Model name."""
        return self.manifest["name"]

    @property
    def version(self) -> str:
        """Semantic version."""
        return self.manifest["version"]

    @property
    def counter(self) -> int:
        """Anti-rollback counter."""
        return int(self.manifest["counter"])

    def card(self) -> dict[str, Any]:
        """The model card."""
        return json.loads(self.files[CARD])

    def golden(self) -> dict[str, Any]:
        """The golden reference results."""
        return json.loads(self.files[GOLDEN])


def parse_version(v: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; raises :class:`BundleError` for anything else."""
    m = _VERSION.match(v) if isinstance(v, str) else None
    if not m:
        raise BundleError(f"version {v!r} is not MAJOR.MINOR.PATCH")
    return tuple(int(x) for x in m.groups())  # type: ignore[return-value]


def key_id(public_key) -> str:
    """Short id of an Ed25519 public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> str:
    """Make an Ed25519 key pair; write the private key (0600) and the public key (PEM).

    Returns
    -------
    str
        The key id.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    priv, pub = Path(private_path), Path(public_path)
    if priv.exists():
        raise BundleError(f"{priv} exists; refusing to overwrite a private key")
    key = Ed25519PrivateKey.generate()
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return key_id(key.public_key())


def hardware_dirs(sub: str) -> list[Path]:
    """``sub`` of each ``hardware/`` folder, in the order they are searched.

    ``$HOLODIFF_HARDWARE``, then the source tree's, then the analyzer image's
    (``/usr/share/holodiff/hardware``); the first that holds what is looked for wins.
    """
    env = os.environ.get("HOLODIFF_HARDWARE")
    roots = [Path(env)] if env else []
    roots += [Path(__file__).resolve().parents[1] / "hardware", Path("/usr/share/holodiff/hardware")]
    return [r / sub for r in roots]


def trust_dirs() -> list[Path]:
    """Folders of the trust store (``hardware/keys``)."""
    return hardware_dirs("keys")


def load_trust(dirs: list[Path] | None = None) -> dict[str, Any]:
    """Trusted public keys by id, from every ``*.pub`` of the first trust folder that exists."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    for d in dirs if dirs is not None else trust_dirs():
        if not d.is_dir():
            continue
        keys = {}
        for f in sorted(d.glob("*.pub")):
            try:
                k = load_pem_public_key(f.read_bytes())
            except ValueError:
                raise BundleError(f"trust store key {f} is not a PEM public key; reinstall "
                                  f"the software") from None
            if not isinstance(k, Ed25519PublicKey):
                raise BundleError(f"trust store key {f} is not an Ed25519 key")
            keys[key_id(k)] = k
        return keys
    return {}


def _read_members(path: Path) -> dict[str, bytes]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle ({exc.strerror}); check the path") from None
    if size > MAX_ARCHIVE_BYTES:
        raise BundleError(f"{path}: {size} bytes is larger than a model bundle may be "
                          f"({MAX_ARCHIVE_BYTES}); refused")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                name = m.name
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts or "\\" in name:
                    raise BundleError(f"{path}: member {name!r} points outside the bundle "
                                      f"(path traversal); refused")
                if not m.isreg():
                    raise BundleError(f"{path}: member {name!r} is not a plain file (link or "
                                      f"device); refused")
                if name not in MEMBERS:
                    raise BundleError(f"{path}: unexpected member {name!r}; refused")
                if name in files:
                    raise BundleError(f"{path}: member {name!r} appears twice; refused")
                if m.size > MAX_MEMBER_BYTES:
                    raise BundleError(f"{path}: member {name!r} is {m.size} bytes, above the "
                                      f"limit; refused")
                fh = tar.extractfile(m)
                data = fh.read() if fh is not None else b""
                if len(data) != m.size:
                    raise BundleError(f"{path}: member {name!r} is truncated; download the "
                                      f"bundle again")
                files[name] = data
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{path}: not a model bundle or truncated ({exc}); download the "
                          f"bundle again") from None
    missing = [n for n in MEMBERS if n not in files]
    if missing:
        raise BundleError(f"{path}: bundle has no {missing[0]} (truncated or incomplete); "
                          f"download the bundle again")
    return files


def read_bundle(path: str | os.PathLike[str], *, trust: dict[str, Any] | None = None) -> Bundle:
    """Read and verify a bundle: archive, signature, manifest, every file's hash.

    Parameters
    ----------
    path : path-like
        The ``.hdmodel`` file.
    trust : dict, optional
        Trusted public keys by id (default: :func:`load_trust`).

    Raises
    ------
    BundleError
        With the first reason the bundle cannot be trusted.
    """
    from cryptography.exceptions import InvalidSignature

    path = Path(path)
    files = _read_members(path)
    keys = load_trust() if trust is None else trust
    if not keys:
        raise BundleError("the trust store (hardware/keys) holds no keys; reinstall the software")
    sig = files[SIGNATURE]
    signer = None
    for kid, k in keys.items():
        try:
            k.verify(sig, files[MANIFEST])
            signer = kid
            break
        except InvalidSignature:
            continue
    if signer is None:
        raise BundleError(f"{path}: the signature does not verify with any trusted key (wrong "
                          f"key, or the manifest was changed after signing); refused")
    try:
        man = json.loads(files[MANIFEST])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: signed manifest is not JSON ({exc})") from None
    _check_manifest(man, path)
    for name in (MODEL, CARD, GOLDEN):
        got = hashlib.sha256(files[name]).hexdigest()
        if got != man["files"][name]:
            raise BundleError(f"{path}: {name} does not match the signed manifest (file swapped "
                              f"or damaged); refused")
    return Bundle(path=path, manifest=man, manifest_sha256=hashlib.sha256(files[MANIFEST])
                  .hexdigest(), key_id=signer, files=files)


def _check_manifest(man: Any, path: Path) -> None:
    keys = {"format", "name", "version", "counter", "classes", "input", "preprocessing",
            "min_software", "created", "training", "files", "golden"}
    if not isinstance(man, dict):
        raise BundleError(f"{path}: manifest is not an object")
    if man.get("format") != FORMAT:
        raise BundleError(f"{path}: manifest format {man.get('format')!r} is not {FORMAT!r}; "
                          f"update the software")
    if set(man) != keys:
        extra = sorted(set(man) ^ keys)
        raise BundleError(f"{path}: manifest key {extra[0]!r} is unknown or missing")
    parse_version(man["version"])
    parse_version(man["min_software"])
    if not isinstance(man["counter"], int) or isinstance(man["counter"], bool) or man["counter"] < 0:
        raise BundleError(f"{path}: manifest counter must be a non-negative integer")
    if not isinstance(man["files"], dict) or set(man["files"]) != {MODEL, CARD, GOLDEN}:
        raise BundleError(f"{path}: manifest must list exactly {MODEL}, {CARD}, {GOLDEN}")


def check_software(bundle: Bundle, software_version: str) -> None:
    """Refuse a bundle that needs a newer software version."""
    need = bundle.manifest["min_software"]
    if parse_version(software_version) < parse_version(need):
        raise BundleError(f"model {bundle.name} {bundle.version} needs software {need} or newer "
                          f"(this is {software_version}); update the software first")


def build_bundle(out: str | os.PathLike[str], *, model: bytes, card: dict[str, Any],
                 golden: dict[str, Any], version: str, counter: int, min_software: str,
                 private_key_path: str | os.PathLike[str]) -> Path:
    """Write a signed bundle.

    Parameters
    ----------
    out : path-like
        The ``.hdmodel`` file to create (written beside, then renamed).
    model : bytes
        The ONNX model.
    card : dict
        Its model card (name, classes, input, training).
    golden : dict
        Reference results on the golden capture set (:mod:`device.golden`).
    version, counter, min_software : str, int, str
        Semantic version, anti-rollback counter, oldest software that may run it.
    private_key_path : path-like
        The Ed25519 private key (PEM).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    parse_version(version)
    parse_version(min_software)
    try:
        key = load_pem_private_key(Path(private_key_path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot load the signing key {private_key_path} ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{private_key_path} is not an Ed25519 private key")
    card = dict(card, version=version)
    files = {MODEL: model, CARD: json.dumps(card, indent=1).encode(),
             GOLDEN: json.dumps(golden, indent=1).encode()}
    manifest = {
        "format": FORMAT, "name": card["name"], "version": version, "counter": int(counter),
        "classes": card["classes"], "input": card["input"],
        "preprocessing": {"crop": "per-cell refocused complex field, 0.75 um/px, centre "
                                  f"{card['input']['size']} px",
                          "channels": card["input"].get("layout", "")},
        "min_software": min_software,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "training": {k: card.get("training", {}).get(k) for k in ("captures", "crops", "seed",
                                                                   "epochs")
                     if k in card.get("training", {})},
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
        "golden": {"captures": [c["name"] for c in golden.get("captures", [])]},
    }
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()
    files[SIGNATURE] = key.sign(files[MANIFEST])
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    with tarfile.open(tmp, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(files[name]))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out

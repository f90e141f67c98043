"""`md lineage`: walk an artifact's chain back to its teacher and data, and check it.

ARTIFACT is a student (or teacher) checkpoint, an exported model (ONNX ``metadata_props["md"]``
or the TorchScript extra file ``md.json``) or a store (directory, packed .zip, URL). The
chain, as recorded:

    export -> student checkpoint (file sha256) -> store (URL, schema, codec, identity hash,
    pack manifest hash) -> teacher (file sha256, training config, training-data fingerprint)
    -> datasets (fingerprint sha256 per split)

With ``verify=True`` each link whose far end was given (``checkpoint``, ``store``,
``teacher``, ``data``) is recomputed from that artifact and marked ``holds`` or ``broken``;
the others are ``not checked``. A store's identity hash is
`md.student_train.provenance.store_lineage`'s ``attrs_sha256`` (root attributes without
``last_run``: the same for a directory and its packed zip).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from md.data import dataset_fingerprint, open_dataset
from md.errors import MdError
from md.models.checkpoint import file_sha256, load_checkpoint
from md.stores import open_store
from md.stores.pack import MANIFEST_NAME, check_manifest
from md.student_train.provenance import (
    recorded_dataset_sha256,
    recorded_teacher_sha256,
    store_lineage,
)

HOLDS, BROKEN, NOT_CHECKED = "holds", "broken", "not checked"


@dataclass
class Link:
    name: str  # "student -> store"
    recorded: str | None  # what the nearer artifact says about the farther one
    actual: str | None  # recomputed from the farther artifact (None: not given)
    status: str = NOT_CHECKED
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "link": self.name,
            "status": self.status,
            "recorded": self.recorded,
            "actual": self.actual,
            "note": self.note,
        }


def _link(
    name: str, recorded: str | None, actual: str | None, verify: bool, note: str = ""
) -> Link:
    if not verify:
        return Link(name, recorded, None, NOT_CHECKED, note or "run with --verify")
    if actual is None:
        return Link(name, recorded, None, NOT_CHECKED, note or "artifact not given")
    if recorded is None:
        return Link(name, None, actual, NOT_CHECKED, "nothing recorded to compare with")
    return Link(name, recorded, actual, HOLDS if recorded == actual else BROKEN, note)


def read_artifact(path: str) -> tuple[str, dict[str, Any]]:
    """(kind, content): kind is "export", "checkpoint" or "store"."""
    p = Path(path)
    if "://" in path or p.is_dir():
        return "store", {}
    if not p.is_file():
        raise MdError(f"{path}: not found; pass a checkpoint, an exported model or a store")
    if p.suffix.lower() == ".onnx":
        return "export", _onnx_meta(p)
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
            if MANIFEST_NAME in names or "zarr.json" in names:
                return "store", {}
            extra = [n for n in names if n.endswith("extra/md.json")]
            if extra:
                return "export", json.loads(zf.read(extra[0]))
    return "checkpoint", load_checkpoint(p)


def _onnx_meta(p: Path) -> dict[str, Any]:
    try:
        import onnx
    except ImportError:
        raise MdError(f"{p}: reading ONNX metadata needs onnx: pip install 'md[deploy]'") from None
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise MdError(f"{p}: not a readable ONNX file ({type(e).__name__}); re-export it") from None
    for prop in proto.metadata_props:
        if prop.key == "md":
            return dict(json.loads(prop.value))
    raise MdError(f"{p}: no md metadata in this ONNX file; export it with md export")


def _store_node(url: str) -> dict[str, Any]:
    with open_store(url) as ts:
        attrs = ts.attrs
        ident = store_lineage(ts, np.zeros(0, dtype=np.int64))
    teacher: dict[str, Any] = attrs["teacher"] if isinstance(attrs.get("teacher"), dict) else {}
    dataset: dict[str, Any] = attrs["dataset"] if isinstance(attrs.get("dataset"), dict) else {}
    node = {
        "url": url,
        "schema_version": attrs.get("schema_version"),
        "codec": attrs.get("codec"),
        "attrs_sha256": ident["attrs_sha256"],
        "manifest_sha256": None,
        "teacher_sha256": recorded_teacher_sha256(attrs),
        "teacher_config": teacher.get("config"),
        "teacher_train_dataset_sha256": teacher.get("train_dataset_sha256"),
        "teacher_train_split": teacher.get("train_split"),
        "dataset_sha256": recorded_dataset_sha256(attrs),
        "split": dataset.get("split"),
        "created": attrs.get("created"),
        "tool_version": attrs.get("tool_version"),
    }
    p = Path(url)
    if p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            if MANIFEST_NAME in zf.namelist():
                import hashlib

                node["manifest_sha256"] = hashlib.sha256(zf.read(MANIFEST_NAME)).hexdigest()
    return node


def _mtime(path: str) -> str:
    """The file's modification time (UTC): checkpoints record no creation time."""
    stamp = Path(path).stat().st_mtime
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


def _teacher_node(path: str) -> dict[str, Any]:
    node: dict[str, Any] = {
        "path": path,
        "sha256": file_sha256(path),
        "file_modified": _mtime(path),
        "readable": True,
    }
    try:
        ckpt = load_checkpoint(path)
    except MdError as e:
        node.update(readable=False, note=str(e))
        return node
    node.update(
        md_version=ckpt.get("md_version"),
        model_kind=ckpt.get("model_kind"),
        iteration=ckpt.get("iteration"),
        config=ckpt.get("config"),
        train_dataset_sha256=(ckpt.get("dataset_fingerprint") or {}).get("sha256"),
        train_split=ckpt.get("split"),
    )
    return node


class _Fingerprints:
    """Dataset fingerprints of --data per split, computed once each."""

    def __init__(self, root: str | None) -> None:
        self.root = root
        self.cache: dict[str, str] = {}

    def sha(self, split: str | None) -> str | None:
        if self.root is None or not split:
            return None
        if split not in self.cache:
            self.cache[split] = dataset_fingerprint(open_dataset(self.root, split))["sha256"]
        return self.cache[split]


def lineage(
    artifact: str,
    *,
    store: str | None = None,
    teacher: str | None = None,
    data: str | None = None,
    checkpoint: str | None = None,
    verify: bool = False,
) -> dict[str, Any]:
    """The chain of `artifact` (JSON-ready) and, with `verify`, the status of each link."""
    kind, content = read_artifact(artifact)
    chain: dict[str, Any] = {}
    links: list[Link] = []
    fps = _Fingerprints(data)
    student: dict[str, Any] | None = None  # the checkpoint's lineage fields
    if kind == "export":
        chain["export"] = {
            "path": artifact,
            "sha256": file_sha256(artifact),
            "file_modified": _mtime(artifact),
            "format": content.get("format"),
            "md_version": content.get("md_version"),
            "checkpoint": content.get("checkpoint"),
            "checkpoint_sha256": content.get("checkpoint_sha256"),
        }
        actual = file_sha256(checkpoint) if checkpoint else None
        links.append(
            _link("export -> checkpoint", content.get("checkpoint_sha256"), actual, verify)
        )
        if checkpoint:
            content = load_checkpoint(checkpoint)
            kind = "checkpoint"
            artifact = checkpoint
        else:
            student = {
                "lineage": content.get("lineage") or {},
                "dataset_sha256": content.get("dataset_sha256"),
                "split": None,
                "model_kind": (content.get("model") or {}).get("kind"),
            }
    if kind == "checkpoint":
        fp = content.get("dataset_fingerprint") or {}
        node = {
            "path": artifact,
            "sha256": file_sha256(artifact),
            "file_modified": _mtime(artifact),
            "model_kind": content.get("model_kind"),
            "task": content.get("task"),
            "md_version": content.get("md_version"),
            "iteration": content.get("iteration"),
            "split": content.get("split"),
            "dataset_sha256": fp.get("sha256"),
            "config": content.get("config"),
        }
        if content.get("model_kind") == "teacher":
            chain["teacher"] = {**node, "train_dataset_sha256": fp.get("sha256")}
            links.append(
                _link(
                    "teacher -> training data",
                    fp.get("sha256"),
                    fps.sha(content.get("split")),
                    verify,
                )
            )
            return _report(chain, links, verify)
        chain["student"] = node
        student = {
            "lineage": content.get("lineage") or {},
            "dataset_sha256": fp.get("sha256"),
            "split": content.get("split"),
            "model_kind": content.get("model_kind"),
        }
    store_node: dict[str, Any] | None = None
    if student is not None:
        lin: dict[str, Any] = student["lineage"] if isinstance(student["lineage"], dict) else {}
        rec_store: dict[str, Any] = lin["store"] if isinstance(lin.get("store"), dict) else {}
        chain["student_lineage"] = {
            "store_url": rec_store.get("url"),
            "store_attrs_sha256": rec_store.get("attrs_sha256"),
            "store_codec": rec_store.get("codec"),
            "store_manifest_sha256": rec_store.get("manifest_sha256"),
            "store_created": rec_store.get("created"),
            "store_tool_version": rec_store.get("tool_version"),
            "teacher_sha256": lin.get("teacher_sha256"),
            "online_teacher": lin.get("online_teacher"),
        }
        if store:
            store_node = _store_node(store)
        if rec_store:
            links.append(
                _link(
                    "student -> store",
                    rec_store.get("attrs_sha256"),
                    store_node["attrs_sha256"] if store_node else None,
                    verify,
                )
            )
        if rec_store.get("manifest_sha256"):  # trained from a packed zip
            links.append(
                _link(
                    "student -> pack manifest",
                    rec_store.get("manifest_sha256"),
                    store_node["manifest_sha256"] if store_node else None,
                    verify,
                )
            )
        t_rec = lin.get("teacher_sha256")
        if t_rec:
            links.append(
                _link(
                    "student -> teacher", t_rec, file_sha256(teacher) if teacher else None, verify
                )
            )
        links.append(
            _link(
                "student -> training data",
                student["dataset_sha256"],
                fps.sha(student["split"]),
                verify,
                "" if student["split"] or not verify else "split unknown: pass the checkpoint",
            )
        )
    elif kind == "store":
        store_node = _store_node(artifact)
    if store_node is not None:
        chain["store"] = store_node
        links.append(
            _link(
                "store -> teacher",
                store_node["teacher_sha256"],
                file_sha256(teacher) if teacher else None,
                verify,
            )
        )
        links.append(
            _link(
                "store -> cached data",
                store_node["dataset_sha256"],
                fps.sha(store_node["split"]),
                verify,
            )
        )
        if store_node["manifest_sha256"] is not None:
            url = store_node["url"]
            problems = check_manifest(url) if verify else []
            links.append(
                Link(
                    "store -> pack manifest",
                    store_node["manifest_sha256"],
                    store_node["manifest_sha256"] if verify else None,
                    (BROKEN if problems else HOLDS) if verify else NOT_CHECKED,
                    "; ".join(problems[:3]),
                )
            )
    if teacher:
        t_node = _teacher_node(teacher)
        chain["teacher"] = t_node
        rec = t_node.get("train_dataset_sha256")
        links.append(
            _link("teacher -> training data", rec, fps.sha(t_node.get("train_split")), verify)
        )
    elif store_node is not None:
        links.append(
            _link(
                "teacher -> training data",
                store_node["teacher_train_dataset_sha256"],
                fps.sha(store_node["teacher_train_split"]),
                verify,
                "as the store recorded it",
            )
        )
        chain["teacher"] = {
            "sha256": store_node["teacher_sha256"],
            "config": store_node["teacher_config"],
            "train_dataset_sha256": store_node["teacher_train_dataset_sha256"],
            "train_split": store_node["teacher_train_split"],
            "source": "recorded in the store",
        }
    if data:
        chain["datasets"] = {"root": data, "fingerprints": dict(fps.cache)}
    return _report(chain, links, verify)


def _report(chain: dict[str, Any], links: list[Link], verify: bool) -> dict[str, Any]:
    broken = [lk.name for lk in links if lk.status == BROKEN]
    return {
        "chain": chain,
        "links": [lk.to_json() for lk in links],
        "verified": verify,
        "ok": not broken,
        "broken": broken,
    }


def report_lines(r: dict[str, Any]) -> list[str]:
    """Human view: one block per node, then one line per link."""
    lines: list[str] = []
    for name, node in r["chain"].items():
        lines.append(f"{name}:")
        for key, value in node.items():
            if key == "config" or key == "teacher_config":
                value = "(recorded; --json shows it)" if value else None
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            lines.append(f"  {key}: {text}")
    lines.append("links:")
    for lk in r["links"]:
        short = (lk["recorded"] or "-")[:16]
        extra = f" ({lk['note']})" if lk["note"] else ""
        lines.append(f"  {lk['link']:<26} {lk['status']:<12} {short}{extra}")
    if r["verified"]:
        lines.append("chain holds" if r["ok"] else f"BROKEN: {', '.join(r['broken'])}")
    return lines

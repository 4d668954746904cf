"""``crosslayer verify``: check a store or a study A run directory for missing or damaged files.

>>> report = verify_path("runs/demo")          # a store or a run directory
>>> report.ok, [a.line() for a in report.artefacts]

A *store* is checked shard by shard against the sha256 sums in its manifest
(:func:`crosslayer.store.verify_store`). A *run* (``crosslayer run``) is checked artefact by
artefact: every store in it, every SAE directory (``cfg.json`` parses, the safetensors header
is readable, its byte ranges fit the file and the tensor shapes match ``cfg.json``),
``config.json``, ``results.json`` (parses, and every file it names exists), the plots and
``report.html``; and every file listed in ``checksums.json``, which a run writes last
(:func:`record_checksums`). A run written before ``checksums.json`` existed is checked for
presence and structure only. See ``docs/store_format.md``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crosslayer.errors import CrosslayerError
from crosslayer.fs import atomic_write_json
from crosslayer.rundir import (
    CHECKSUMS,
    CONFIG,
    REPORT,
    RESULTS,
    SAES,
    STAGES,
    STORES,
    SWEEP_STORE,
    TRAINED_SAES,
    TRANSCODER,
    RunDir,
    sae_path,
)
from crosslayer.store.format import MANIFEST, VerifyReport, sha256_file, verify_store

CHECKSUMS_FORMAT = "crosslayer-run-checksums"
SAE_WEIGHTS = "sae_weights.safetensors"
TRANSCODER_WEIGHTS = "model.safetensors"  # crosslayer.transcoder's name (not imported: torch)

Status = Literal["ok", "missing", "damaged"]

# Bytes per element of each safetensors dtype.
_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


@dataclass
class Problem:
    """One missing or damaged file inside an artefact."""

    file: str  # inside the artefact ("shard_00001/tokens.npy"); "" for the artefact itself
    status: Literal["missing", "damaged"]
    why: str = ""

    def __str__(self) -> str:
        if not self.file:  # the artefact's own status is printed beside it already
            return self.why or self.status
        return f"{self.file} {self.status}" + (f" ({self.why})" if self.why else "")


@dataclass
class Artefact:
    """One artefact of a run (a store, an SAE directory, a file) and what is wrong with it."""

    name: str  # relative to the verified directory: "store", "saes/baseline", "results.json"
    kind: str  # "store", "sae", "config", "results", "plot", "report", "stages"
    problems: list[Problem] = field(default_factory=list)
    summary: str = ""  # what was checked, for the ok line

    @property
    def status(self) -> Status:
        """``damaged`` if any file is damaged, else ``missing`` if any is missing, else ok."""
        if any(p.status == "damaged" for p in self.problems):
            return "damaged"
        return "missing" if self.problems else "ok"

    def line(self) -> str:
        """``ok       store: 3 shards, ...`` or ``damaged  saes/baseline: ...``."""
        what = "; ".join(map(str, self.problems)) if self.problems else self.summary
        return f"{self.status:<8} {self.name}" + (f": {what}" if what else "")


@dataclass
class PathReport:
    """Outcome of :func:`verify_path`."""

    path: Path
    kind: Literal["store", "run"]
    artefacts: list[Artefact]
    checksums: bool  # whether sha256 sums were checked (always for a store)
    store: VerifyReport | None = None  # the store's own report when ``kind == "store"``

    @property
    def bad(self) -> list[Artefact]:
        return [a for a in self.artefacts if a.status != "ok"]

    @property
    def ok(self) -> bool:
        return not self.bad

    def problem(self) -> str:
        """One line naming every bad artefact (or nothing when all is well)."""
        if self.store is not None:
            return _store_problem(self.path, self.store)
        bad = [f"{a.name} {a.status} ({'; '.join(map(str, a.problems))})" for a in self.bad]
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        return f"run {self.path} has {len(bad)} bad artefact(s) of {len(self.artefacts)}: {shown}"

    def fix(self) -> str:
        if self.store is not None:
            if self.store.missing or self.store.damaged:
                return "delete the listed shard directories and run the same collect command again"
            return "run the same collect command again to finish it"
        return (
            "delete the bad artefacts (whole shard or SAE directories, damaged files) and run "
            "the same `crosslayer run` command again: finished stages are reused"
        )

    def summary(self) -> str:
        """The ok line's text."""
        if self.store is not None:
            s = self.store
            return f"{self.path}: {s.n_shards} shards, {s.n_files} files, checksums match"
        sums = "checksums match" if self.checksums else f"no {CHECKSUMS}: structure checked only"
        return f"run {self.path}: {len(self.artefacts)} artefacts, {sums}"


def verify_path(path: str | Path) -> PathReport:
    """Verify a store directory or a study A run directory (see the module docstring).

    Raises :class:`CrosslayerError` if ``path`` is neither; damage is reported, not raised.
    """
    path = Path(path)
    if (path / MANIFEST).is_file():
        report = verify_store(path)
        artefact = _store_artefact(path.name or str(path), report)
        return PathReport(path, "store", [artefact], True, store=report)
    if (path / CONFIG).is_file() or (path / RESULTS).is_file():
        return _verify_run(path)
    where = (
        "it does not exist"
        if not path.exists()
        else "no manifest.json, config.json or results.json"
    )
    raise CrosslayerError(
        f"no activation store or study A run at {path} ({where})",
        "pass a store directory (`crosslayer collect --out`) or a run directory "
        "(`crosslayer run --out`)",
    )


# --------------------------------------------------------------------------------------------
# checksums a run records of its own files


def run_files(run_dir: Path) -> Iterator[str]:
    """Every file of the run except the stores (their manifests hold their sums), the
    checksum file itself and leftover temp files; relative POSIX paths, sorted."""
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if not p.is_file() or rel.parts[0] in STORES or rel.as_posix() == CHECKSUMS:
            continue
        if any(part.startswith(".") for part in rel.parts):  # atomic-write temp files
            continue
        yield rel.as_posix()


def record_checksums(run_dir: str | Path) -> dict[str, str]:
    """Write ``RUN/checksums.json``: the sha256 of every file of :func:`run_files`."""
    run_dir = Path(run_dir)
    files = {rel: sha256_file(run_dir / rel) for rel in run_files(run_dir)}
    atomic_write_json(
        run_dir / CHECKSUMS, {"format": CHECKSUMS_FORMAT, "format_version": 1, "files": files}
    )
    return files


def forget_checksums(run_dir: str | Path) -> None:
    """Remove ``RUN/checksums.json`` before a run changes its files."""
    (Path(run_dir) / CHECKSUMS).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# a run directory


def _verify_run(run_dir: Path) -> PathReport:
    arts: dict[str, Artefact] = {}

    def art(name: str, kind: str) -> Artefact:
        return arts.setdefault(name, Artefact(name, kind))

    config = _read_json(run_dir, CONFIG, art(CONFIG, "config"))
    results = _read_json(run_dir, RESULTS, art(RESULTS, "results"))
    if config and results and config.get("config_hash") != results.get("config_hash"):
        art(RESULTS, "results").problems.append(
            Problem("", "damaged", "its config_hash differs from config.json's")
        )
    if results is not None and results.get("schema") != "crosslayer.study_a":
        art(RESULTS, "results").problems.append(
            Problem("", "damaged", "not a study A results file")
        )
    results = results or {}

    # Stores: the main one always, the sweep's when the run made (or was to make) one.
    if results:
        sweep = bool((results.get("data") or {}).get("sweep_store"))
    else:
        sweep = bool(((config or {}).get("config", {}).get("sweep") or {}).get("enabled", True))
    for name in STORES if sweep or (run_dir / SWEEP_STORE).exists() else STORES[:1]:
        arts[name] = _check_store(run_dir / name, name)

    # SAE directories: both trained ones, and any other under saes/.
    names = set(TRAINED_SAES)
    if (run_dir / SAES).is_dir():
        names |= {p.name for p in (run_dir / SAES).iterdir() if p.is_dir()}
    for name in sorted(names):
        _check_sae(run_dir / sae_path(name), art(sae_path(name), "sae"))

    # The transcoder artefact: every finished run has one, but a run from before it existed
    # kept the ridge map in stages/transcoder.npz instead.
    legacy = RunDir(run_dir).transcoder_weights.is_file()
    if (run_dir / TRANSCODER).exists() or (results and not legacy):
        _check_transcoder(run_dir / TRANSCODER, art(TRANSCODER, "transcoder"))

    # Files results.json names: stores, trained SAEs, plots; and the report beside them.
    if results:
        named = [(results.get("data") or {}).get(k) for k in STORES]
        named += [s.get("path") for k, s in (results.get("saes") or {}).items() if k in names]
        for rel in filter(None, named):
            where = run_dir / rel  # relative to the run (absolute in older runs)
            if _inside(where, run_dir) in arts:
                continue  # a store or SAE of the run: checked, and reported, on its own
            if not where.exists():
                art(RESULTS, "results").problems.append(
                    Problem(str(rel), "missing", "named by results.json")
                )
        for plot in results.get("plots") or []:
            a = art(plot, "plot")
            if not (run_dir / plot).is_file():
                a.problems.append(Problem("", "missing", "named by results.json"))
    report = art(REPORT, "report")
    if not (run_dir / REPORT).is_file():
        report.problems.append(Problem("", "missing"))

    checked = _check_sums(run_dir, art, arts)
    for a in arts.values():
        if a.kind in ("config", "results", "plot", "report") and not a.summary:
            a.summary = "checksum matches" if checked and a.name in checked else "present"
    return PathReport(run_dir, "run", list(arts.values()), checksums=bool(checked))


def _inside(path: Path, run_dir: Path) -> str:
    """``path`` relative to ``run_dir`` as a POSIX string, or ``""`` if it lies elsewhere."""
    try:
        return path.relative_to(run_dir).as_posix()
    except ValueError:
        return ""


def _check_sums(
    run_dir: Path, art: Callable[[str, str], Artefact], arts: dict[str, Artefact]
) -> set[str]:
    """Compare every file of ``checksums.json`` with its sum; return the names checked."""
    if not (run_dir / CHECKSUMS).is_file():
        return set()
    record = _read_json(run_dir, CHECKSUMS, art(CHECKSUMS, "checksums"))
    if record is None:
        return set()
    if record.get("format") != CHECKSUMS_FORMAT or not isinstance(record.get("files"), dict):
        art(CHECKSUMS, "checksums").problems.append(
            Problem("", "damaged", "not a crosslayer checksum file")
        )
        return set()
    art(CHECKSUMS, "checksums").summary = f"{len(record['files'])} files listed"
    for rel, digest in record["files"].items():
        parts = rel.split("/")
        # A file counts against the artefact holding it: saes/<name>, stages, or itself.
        owner = "/".join(parts[:2]) if parts[0] == SAES and len(parts) > 2 else parts[0]
        a = art(owner, "sae" if parts[0] == SAES else "stages" if owner == STAGES else "file")
        inside = rel[len(owner) + 1 :]  # "" when the file is the artefact itself
        if any(p.file in ("", inside) for p in a.problems):
            continue  # already reported (or the whole artefact is missing)
        if not (run_dir / rel).is_file():
            a.problems.append(Problem(inside, "missing"))
        elif sha256_file(run_dir / rel) != digest:
            a.problems.append(Problem(inside, "damaged", "checksum differs"))
    if STAGES in arts:
        arts[STAGES].summary = "checksums match"
    return set(record["files"])


def _read_json(run_dir: Path, rel: str, artefact: Artefact) -> dict[str, Any] | None:
    """Parse ``run_dir/rel`` as a JSON object; note a missing or unreadable file."""
    path = run_dir / rel
    file = "" if artefact.name == rel else rel  # "" when the file is the artefact itself
    if not path.is_file():
        artefact.problems.append(Problem(file, "missing"))
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        artefact.problems.append(Problem(file, "damaged", f"not JSON: {e}"))
        return None
    if not isinstance(value, dict):
        artefact.problems.append(Problem(file, "damaged", "not a JSON object"))
        return None
    return value


def _check_store(path: Path, name: str) -> Artefact:
    """A store of the run: its manifest readable, every shard file matching its sum."""
    if not path.is_dir():
        return Artefact(name, "store", [Problem("", "missing", "no store directory")])
    if not (path / MANIFEST).is_file():
        return Artefact(name, "store", [Problem(MANIFEST, "missing")])
    try:
        return _store_artefact(name, verify_store(path))
    except CrosslayerError as e:  # an unreadable or foreign manifest
        return Artefact(name, "store", [Problem(MANIFEST, "damaged", e.problem)])


def _store_artefact(name: str, report: VerifyReport) -> Artefact:
    a = Artefact(name, "store")
    a.problems += [Problem(f, "missing") for f in report.missing]
    a.problems += [Problem(f, "damaged", "checksum differs") for f in report.damaged]
    if not report.complete:
        a.problems.append(Problem(MANIFEST, "missing", f"incomplete: {report.n_shards} shards"))
    a.summary = f"{report.n_shards} shards, {report.n_files} files, checksums match"
    return a


def _store_problem(path: Path, report: VerifyReport) -> str:
    bad = [*(f"{f} missing" for f in report.missing), *(f"{f} damaged" for f in report.damaged)]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return f"store {path} has {len(bad)} bad file(s): {shown}"
    return f"store {path} is incomplete ({report.n_shards} shards written so far)"


# --------------------------------------------------------------------------------------------
# an SAE directory (sae-lens format: cfg.json + sae_weights.safetensors)


def _check_sae(sae_dir: Path, a: Artefact) -> None:
    """cfg.json parses and gives d_in/d_sae; the weights' header matches them and the file."""
    if not sae_dir.is_dir():
        a.problems.append(Problem("", "missing", "no SAE directory"))
        return
    cfg = _read_json(sae_dir, "cfg.json", a)
    if not (sae_dir / SAE_WEIGHTS).is_file():
        a.problems.append(Problem(SAE_WEIGHTS, "missing"))
        return
    try:
        header = read_safetensors_header(sae_dir / SAE_WEIGHTS)
    except ValueError as e:
        a.problems.append(Problem(SAE_WEIGHTS, "damaged", str(e)))
        return
    if cfg is None:
        return
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except (KeyError, TypeError, ValueError):
        a.problems.append(Problem("cfg.json", "damaged", "no integer d_in and d_sae"))
        return
    want = {"W_enc": [d_in, d_sae], "W_dec": [d_sae, d_in], "b_enc": [d_sae], "b_dec": [d_in]}
    if "threshold" in header:
        want["threshold"] = [d_sae]
    for key, shape in want.items():
        got = header.get(key, {}).get("shape")
        if got != shape:
            why = f"{key} has shape {got}, cfg.json says {shape}" if got else f"no {key}"
            a.problems.append(Problem(SAE_WEIGHTS, "damaged", why))
    a.summary = f"d_in {d_in}, d_sae {d_sae}, tensor shapes match cfg.json"


def _check_transcoder(tc_dir: Path, a: Artefact) -> None:
    """cfg.json parses and gives d_in/d_out; the weights' header has W [d_out, d_in], b [d_out]."""
    if not tc_dir.is_dir():
        a.problems.append(Problem("", "missing", "no transcoder directory"))
        return
    cfg = _read_json(tc_dir, "cfg.json", a)
    if not (tc_dir / TRANSCODER_WEIGHTS).is_file():
        a.problems.append(Problem(TRANSCODER_WEIGHTS, "missing"))
        return
    try:
        header = read_safetensors_header(tc_dir / TRANSCODER_WEIGHTS)
    except ValueError as e:
        a.problems.append(Problem(TRANSCODER_WEIGHTS, "damaged", str(e)))
        return
    if cfg is None:
        return
    try:
        d_in, d_out = int(cfg["d_in"]), int(cfg["d_out"])
    except (KeyError, TypeError, ValueError):
        a.problems.append(Problem("cfg.json", "damaged", "no integer d_in and d_out"))
        return
    for key, shape in {"W": [d_out, d_in], "b": [d_out]}.items():
        got = header.get(key, {}).get("shape")
        if got != shape:
            why = f"{key} has shape {got}, cfg.json says {shape}" if got else f"no {key}"
            a.problems.append(Problem(TRANSCODER_WEIGHTS, "damaged", why))
    a.summary = f"{cfg.get('source_hook')} -> {cfg.get('target_hook')}, shapes match cfg.json"


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file, checked against the file's size.

    Raises ``ValueError`` naming what is wrong: the header cannot be read, a tensor's byte
    range does not match its dtype and shape, or the data is shorter (truncated) or longer
    than the header says.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes: too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"header of {n} bytes in a {size}-byte file: truncated")
        try:
            table = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"header is not JSON: {e}") from e
    if not isinstance(table, dict):
        raise ValueError("header is not a JSON object")
    table.pop("__metadata__", None)
    end = 0
    for key, t in table.items():
        try:
            start, stop = (int(x) for x in t["data_offsets"])
            nbytes = math.prod(int(d) for d in t["shape"]) * _ITEMSIZE[t["dtype"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"tensor {key}: unreadable entry ({e})") from e
        if stop - start != nbytes:
            raise ValueError(f"tensor {key}: {stop - start} bytes for {nbytes} bytes of data")
        end = max(end, stop)
    data = size - 8 - n
    if data < end:
        raise ValueError(f"data ends at byte {end} but the file holds {data}: truncated")
    if data > end:
        raise ValueError(f"{data - end} bytes beyond the last tensor")
    return dict(table)

"""``unisub.analyze``: per-slot universal subspaces of many checkpoints, streamed.

The loop runs slot by slot and, within a slot, over batches of models: each batch holds only that
slot of ``batch_size`` models, so memory is one slot's accumulators plus one batch, whatever the
number or size of the checkpoints. Headers are all validated before any work (a bad file fails in
seconds, not after hours). Models are split into two halves by their index parity (for split-half
stability) and, under ``torch.distributed``, sharded over ranks by index; accumulators are
all-reduced per slot. State is saved as it goes, so ``resume=True`` continues an interrupted run.
"""
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from .accumulator import (LoraDeltaAccumulator, SubspaceAccumulator, _check_gram_precision, _check_rank_energy,
                          finalize_mode_slot)
from .io import DEFAULT_MAX_GRAM_BYTES, CheckpointError, PeftAdapter, discover, matrix_shape, plan
from .io.slots import plan_deltas
from .io.atomic import write_bytes
from .io.errors import reader_call, writer_call
from .metrics import ERROR_RANKS, TAUS
from .subspace import DeltaSubspace, Subspace, load_any

MODES = ("out", "in", "delta")
DELTA_SUFFIX = ".delta"

REPORT = "report.json"


@dataclass
class AnalysisResult:
    """``report``: the run's report (what ``report.json`` holds), parsed on first use: a 500-model
    delta slot's entry carries every model's scores, and a job that only writes its folder (the
    command line with --quiet --no-plots) need not parse megabytes of JSON it wrote itself."""

    _report: Union[Dict, str]
    out: Optional[Path] = None
    _subspaces: Dict[str, Subspace] = field(default_factory=dict)
    profile_json: str = ""  # the report's "profile" as JSON text ("" without profile=True)

    @property
    def report(self) -> Dict:
        if isinstance(self._report, str):
            self._report = json.loads(self._report)
        return self._report

    @property
    def slots(self) -> List[str]:
        return list(self.report["slots"])

    def subspace(self, slot: str):
        """The ``Subspace`` of a slot, or the ``DeltaSubspace`` of a ``<module>.delta`` slot."""
        if slot in self._subspaces:
            return self._subspaces[slot]
        if self.out is None or slot not in self.report["slots"]:
            raise KeyError(slot)  # not this run's: a file of that name would be another run's
        return load_any(self.out / "subspaces" / f"{slot_file_stem(slot)}.safetensors")


def slot_file_stem(slot: str) -> str:
    """The file name (without suffix) of a slot's files: the slot name when it is plain and short,
    else a safe form with a hash of the name (docs/format.md); libunisub's rule."""
    return torch.ops.unisub.slot_file_stem(slot)


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _plan_models(checkpoints):
    """Each model's slot table as the planner reads it: (name, slots, file_of, is_adapter, is_dora,
    peft_type)."""
    return [(ck.name, ck.slots, ck.file_of, isinstance(ck, PeftAdapter),
             isinstance(ck, PeftAdapter) and bool(ck.config.get("use_dora", False)),
             ck.config.get("peft_type") or "" if isinstance(ck, PeftAdapter) else "") for ck in checkpoints]


def _plan(checkpoints, patterns, include_1d, modes, max_gram_bytes, batch_size):
    """libunisub's slot plan (``unisub.io.plan``), the one ``unisub-analyze`` makes: the selected
    tensors, the slots analysed along out / in with their modes (a Gram beyond ``max_gram_bytes`` is
    skipped), the delta modules' costs, what is skipped and why, and the cost estimate; bad input
    raises ``CheckpointError``."""
    return plan(_plan_models(checkpoints), patterns, include_1d, modes, max_gram_bytes, batch_size)


def _plan_deltas(checkpoints, chosen, named):
    """module -> (lora_A key, lora_B key, (m, n)) for every module of which a factor was selected:
    libunisub's delta plan (``unisub.io.plan_deltas``), the one ``unisub-analyze`` makes."""
    return plan_deltas(_plan_models(checkpoints), chosen, named)


def _read_factors(ck, a_key, b_key):
    """(B [m, r], A [r, n]) as stored, and the module's scaling."""
    A = ck.get_unscaled(a_key)
    B = ck.get_unscaled(b_key)
    A, B = A.reshape(matrix_shape(tuple(A.shape))), B.reshape(matrix_shape(tuple(B.shape)))
    s = ck.scaling(b_key)
    which, why = torch.ops.unisub.analysis_delta_problem(B, A, float(s))
    if why:
        key = a_key if which == "lora_A" else b_key
        raise CheckpointError(ck.file_of(key), why, slot=key)
    return B, A, s


def _add_delta_model(acc, ck, a_key, b_key, i):
    """Model ``i``'s factors into ``acc``: where libunisub reads the adapter, its add_model reads,
    checks and adds them in one call (the rule unisub-analyze follows: model_reading.h); an
    adapter_model.bin's are read here, with torch.load, and added."""
    lib = ck.library_checkpoint()
    if lib is not None:
        reader_call(acc._impl.add_model, lib, a_key, b_key, ck.scale, i)
    else:
        B, A, s = _read_factors(ck, a_key, b_key)
        acc.add(B, A, s, id=i)


def _check_weights(ck, key, t, scaling=None):
    """libunisub's reading rule (model_reading.h): finite, and within what float64 can square."""
    why = torch.ops.unisub.analysis_weight_problem(t, scaling)
    if why:
        raise CheckpointError(ck.file_of(key), why, slot=key)


def _source_bytes(ck) -> int:
    """The bytes of a checkpoint's files: with the names, what tells resume the inputs are the same."""
    names = {ck.file_of(k) for k in ck.slots} or {ck.name}
    return sum(os.path.getsize(p) for p in names if os.path.isfile(p))


def _read(ck, key, shape):
    t = ck.get(key)
    if tuple(t.shape) != tuple(ck.slots[key][1]):
        raise CheckpointError(ck.file_of(key), f"read shape {list(t.shape)}, header says {list(ck.slots[key][1])}", slot=key)
    scaled = isinstance(ck, PeftAdapter) and ck.scale and key in ck.scalings
    _check_weights(ck, key, t, float(ck.scalings[key]) if scaled else None)
    return t.reshape(shape)


def analyze(sources: Sequence, slots: Optional[Sequence[str]] = None, modes: Sequence[str] = ("out", "in"),
            energy: Optional[float] = 0.9, rank: Optional[int] = None, out=None, batch_size: int = 8,
            include_1d: bool = False, scale_lora: bool = True, center: bool = True,
            taus: Sequence[float] = TAUS, error_ranks: Sequence[int] = ERROR_RANKS, plots: bool = True,
            progress: bool = True, resume: bool = False, device=None, group=None,
            checkpoint_every: float = 60.0, on_batch: Optional[Callable[[str, int], None]] = None,
            eigen_weights: int = 0, profile: bool = False,
            max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES, gram_precision: str = "auto") -> AnalysisResult:
    """Analyse ``sources`` (files or folders of checkpoints); see ``unisub analyze --help``.

    ``modes``: any of "out", "in" (mode Grams of every selected tensor) and "delta" (PEFT adapters
    only: model-space PCA of each module's ΔW = s·B·A through ``lora_gram``, reported and saved
    as slot ``<module>.delta``, a ``DeltaSubspace``; ``eigen_weights`` = k > 0 also materialises
    its top k eigen-weights as dense m × n matrices). With only "delta", the factors are not
    analysed one by one (and may differ in rank between adapters).

    Models are ordered by their path (docs/format.md), whatever the order of ``sources``.
    ``out``: the output folder (docs/format.md: subspace files, report.json, plots, resume state;
    a second run on the same folder at once is refused); without it nothing is written and
    subspaces stay in memory. ``checkpoint_every``: seconds between saves of the in-progress
    slot's state (0: every batch). ``on_batch(slot, batch_index)`` is called after each batch
    (progress hooks, tests). ``profile``: add a per-stage profile to the report (``"profile"``:
    seconds, bytes and calls of read, convert, gram (float64 GEMMs), gram_float32, gram_check, eigh,
    report and write, and each Gram stage's fraction of the GEMM rate of its precision measured in
    the same run; ``format_profile`` prints it).
    ``max_gram_bytes``: a mode whose float64 Gram (8·d² bytes) is larger is skipped, with its reason
    in the report's "skipped" (default 2 GiB). The plan (slots, skipped, peak memory, rough time) is
    libunisub's, made before anything is read, and printed to stderr when ``progress``.
    ``gram_precision``: "auto" (default: float32 GEMMs summed in float64 where the inputs are 16-bit
    and the Gram's added error stays under 1/16 of what their own rounding can do to it, float64
    otherwise; thin batches stay float64, and thin models of a large Gram are read in larger
    batches, the plan's ``batch`` for the slot),
    "float64" or "float32"; each slot's report entry says what was used ("gram";
    docs/analysis.md, "Precision of the Grams").

    The accumulators, each slot's finalisation and report entry, the file formats and the
    folder's rules are libunisub's (csrc/analysis/), the code ``unisub-analyze`` runs: for the same
    inputs both write the same files."""
    _check_int64(rank=rank, batch_size=batch_size, eigen_weights=eigen_weights, max_gram_bytes=max_gram_bytes,
                 error_ranks=error_ranks)
    if batch_size < 1:
        raise ValueError(f"analyze: batch_size must be >= 1, got {batch_size}")
    if not all(0 < t <= 1 for t in taus):
        raise ValueError(f"analyze: taus are energy fractions and must lie in (0, 1], got {list(taus)}")
    if not all(isinstance(k, int) and k >= 1 for k in error_ranks):
        raise ValueError(f"analyze: error_ranks must be positive integers, got {list(error_ranks)}")
    modes = list(modes)
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise ValueError(f"analyze: modes must be distinct values from {list(MODES)}, got {modes}")
    if eigen_weights < 0:
        raise ValueError(f"analyze: eigen_weights must be >= 0, got {eigen_weights}")
    _check_gram_precision("analyze", gram_precision)
    _check_rank_energy(rank, energy)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    rank_id, world = _dist()
    device = torch.device(device or "cpu")
    patterns = list(slots) if slots else None

    torch.ops.unisub.analysis_profile_reset()
    # Every header (and adapter config) first: bad input fails now, before any output exists.
    checkpoints = discover(sources, scale_lora=scale_lora)
    slot_plan, plan_text = _plan(checkpoints, patterns, include_1d, modes, max_gram_bytes, batch_size)
    if progress and rank_id == 0:
        print(plan_text, file=sys.stderr, flush=True)
    skipped = slot_plan["skipped"]
    deltas = _plan_deltas(checkpoints, slot_plan["selected"], patterns is not None) if "delta" in modes else {}
    chosen = list(slot_plan["slots"])
    slot_modes = {key: list(p["modes"]) for key, p in slot_plan["slots"].items()}  # within the Gram budget
    slot_batch = {key: int(p["batch"]) for key, p in slot_plan["slots"].items()}  # models read at a time
    names = [ck.name for ck in checkpoints]
    options = torch.ops.unisub.analysis_options_json(
        chosen, modes, None if energy is None else float(energy), rank, center, batch_size, world, scale_lora,
        include_1d, [float(t) for t in taus], [int(k) for k in error_ranks], [mod + DELTA_SUFFIX for mod in deltas],
        int(eigen_weights) if deltas else 0, int(max_gram_bytes), gram_precision)
    folder = None
    if out is not None:
        out = Path(out)
        run = torch.ops.unisub.analysis_run_json(names, [_source_bytes(ck) for ck in checkpoints], options)
        if rank_id != 0:
            _barrier()  # the first process prepares the folder
        folder = writer_call(torch.classes.unisub.OutputFolder, str(out), run, resume, rank_id == 0)
        if rank_id == 0 and world > 1:
            _barrier()
    try:
        reports, subspaces = _run(checkpoints, chosen, deltas, slot_modes, slot_batch, folder, rank_id, world, device, center,
                                  rank, energy, batch_size, taus, error_ranks, eigen_weights, progress, group,
                                  checkpoint_every, on_batch, out is None, gram_precision)
        stages = torch.ops.unisub.analysis_profile_json(True) if profile else ""
        text = torch.ops.unisub.analysis_report_json("unisub analyze", names, options, list(skipped),
                                                     list(skipped.values()), list(reports), list(reports.values()),
                                                     stages, slot_plan["totals"])
        if rank_id == 0 and folder is not None:
            writer_call(folder.write_report, text)
    finally:
        if folder is not None:
            folder.close()
    result = AnalysisResult(text, out, subspaces, stages)
    if rank_id == 0 and out is not None and plots:
        from .plots import plot_report

        plot_report(result.report, out / "plots", progress=progress)
    return result


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _check_int64(**values):
    """libunisub's ops take these as int64_t: a larger int would fail as an op-schema cast (a
    RuntimeError naming no argument) once the headers are read, so it is refused here, by name."""
    for name, value in values.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and not _INT64_MIN <= v <= _INT64_MAX:
                raise ValueError(f"analyze: {name} must fit a signed 64-bit integer "
                                 f"({_INT64_MIN} to {_INT64_MAX}), got {v}")


def _run(checkpoints, chosen, deltas, slot_modes, slot_batch, folder, rank_id, world, device, center, rank, energy,
         batch_size, taus, error_ranks, eigen_weights, progress, group, checkpoint_every, on_batch, keep,
         gram_precision):
    """Every slot, batch by batch: the entries (slot -> JSON text) and, when ``keep``, the
    subspaces in memory. A mode slot reads ``slot_batch[key]`` models at a time (the plan's: more
    than ``batch_size`` for thin models of a large Gram), a delta slot ``batch_size``."""
    M = len(checkpoints)
    mine = [i for i in range(M) if i % world == rank_id]

    def split(size):
        return [mine[j:j + size] for j in range(0, len(mine), size)]

    batches = split(batch_size)
    slot_batches = {key: split(slot_batch[key]) for key in chosen}
    bar = _progress(sum(len(b) for b in slot_batches.values()) + len(deltas) * len(batches),
                    progress and rank_id == 0, "analyse")
    reports, subspaces = {}, {}

    def finished(key, count):
        if folder is None or not folder.finished(key):
            return False
        reports[key] = folder.load_entry(key)
        bar.update(count)
        return True

    def store(key, result, kind):
        entry, tensors, meta = result
        reports[key] = entry
        if folder is not None:
            if rank_id == 0:
                names = list(tensors)
                writer_call(folder.save_slot, key, entry, names, [tensors[k] for k in names], meta)
            folder.drop_partial(rank_id)
        elif keep:
            subspaces[key] = kind.from_result(result)

    def batches_from(start, key, save, batches, save_last=True):
        # save_last: also save after the slot's last batch (not for a delta slot: its state is every
        # factor read, which costs more to write than to read again, and the slot finishes next)
        bar.update(start)
        last_save = time.monotonic()
        for bi in range(start, len(batches)):
            yield bi, batches[bi]
            bar.update(1)
            last = save_last and bi + 1 == len(batches)
            if folder is not None and (time.monotonic() - last_save >= checkpoint_every or last):
                save(bi + 1)
                last_save = time.monotonic()
            if on_batch is not None:
                on_batch(key, bi)

    for si, key in enumerate(chosen):
        batches_here = slot_batches[key]
        if finished(key, len(batches_here)):
            continue
        shape = matrix_shape(checkpoints[0].slots[key][1])
        halves = [SubspaceAccumulator(shape, slot_modes[key], center, device, gram_precision) for _ in range(2)]
        start = folder.load_partial_modes(key, halves[0]._impl, halves[1]._impl, rank_id) if folder is not None else 0

        def save(next_batch):
            writer_call(folder.save_partial_modes, key, next_batch, halves[0]._impl, halves[1]._impl, rank_id)

        def read(bi, key=key, shape=shape, batches_here=batches_here):
            return {i: _read(checkpoints[i], key, shape) for i in batches_here[bi]}

        # The next batch is read on a second thread while this one is accumulated (libunisub's
        # reader and accumulator release the GIL): on a cold disk the read hides behind the Grams.
        # Two batches are alive at once.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unisub-read") as reader:
            pending = reader.submit(read, start) if start < len(batches_here) else None
            for bi, batch in batches_from(start, key, save, batches_here):
                mats = pending.result()
                pending = reader.submit(read, bi + 1) if bi + 1 < len(batches_here) else None
                for h in (0, 1):
                    part = [mats[i] for i in batch if i % 2 == h]
                    if part:
                        halves[h].update(part)
                del mats, part
                _release_memory()
        if world > 1:
            for h in halves:
                h.all_reduce(group)
        meta = {"source_files": [checkpoints[0].file_of(key)], "original_shape": list(checkpoints[0].slots[key][1])}
        result = finalize_mode_slot(halves[0], halves[1], key, rank, energy, si, meta, taus, error_ranks)
        del halves
        store(key, result, Subspace)
        _release_memory()
    # each delta slot's store, once released, is kept for the next one's factors (libunisub's
    # DeltaStoreReuse: their pages are mapped already), and freed after the last
    reuse_stores = torch.classes.unisub.DeltaStoreReuse()
    try:
        for di, (mod, (a_key, b_key, shape)) in enumerate(deltas.items()):
            key = mod + DELTA_SUFFIX
            if finished(key, len(batches)):
                continue
            acc = LoraDeltaAccumulator(shape, center, device, gram_precision)
            start = folder.load_partial_delta(key, acc._impl, rank_id) if folder is not None else 0
            acc.reserve(sum(len(b) for b in batches))  # every model's factors in one store, allocated once

            def save(next_batch):
                writer_call(folder.save_partial_delta, key, next_batch, acc._impl, rank_id)

            for _, batch in batches_from(start, key, save, batches, save_last=False):
                for i in batch:
                    _add_delta_model(acc, checkpoints[i], a_key, b_key, i)
            if world > 1:
                acc.all_reduce(group)
            meta = {"factors": [a_key, b_key], "source_files": [checkpoints[0].file_of(b_key)],
                    "models": [checkpoints[i].name for i in sorted(acc.ids)]}
            result = acc.finalize_slot(key, rank, energy, eigen_weights, len(chosen) + di, meta, taus, error_ranks,
                                       release_factors=True)
            del acc
            store(key, result, DeltaSubspace)
            _release_memory()
    finally:
        del reuse_stores
    bar.close()
    return reports, subspaces


def format_profile(report: Union[Dict, AnalysisResult]) -> str:
    """The report's per-stage profile as a table (libunisub's, the one unisub-analyze prints)."""
    if isinstance(report, AnalysisResult):
        if report.profile_json:
            return torch.ops.unisub.analysis_profile_table(report.profile_json)
        report = report.report
    return torch.ops.unisub.analysis_profile_table(json.dumps(report["profile"]))


def _barrier():
    import torch.distributed as dist

    dist.barrier()


def strict_json(obj):
    """``obj`` with every non-finite float replaced by None: RFC 8259 JSON has no NaN or Infinity,
    and a number that is undefined (the eigengap ratio of a frozen slot) is ``null``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_strict_json(path, obj):
    """Written atomically as strict JSON (``allow_nan=False`` after mapping non-finite to null)."""
    write_bytes(path, (json.dumps(strict_json(obj), indent=1, allow_nan=False, ensure_ascii=False) + "\n").encode())


def _release_memory():
    """Freed heap memory back to the OS between batches and slots (libunisub's
    release_freed_memory: glibc ``malloc_trim``, the C++ tool calls it at the same points)."""
    torch.ops.unisub.release_freed_memory()


def _progress(total, enabled, desc):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="batch", dynamic_ncols=True, leave=True)

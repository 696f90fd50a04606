"""Trim the component image's virtual environment: delete what no step loads, strip symbol tables, link duplicates.

Run by ``infra/Dockerfile`` in the ``deps`` stage, after ``pip install`` (the runtime image copies the trimmed
venv), with the venv's own Python and binutils' ``strip``/``readelf``::

    python infra/trim_venv.py SITE_PACKAGES          # prints what each rule saved, in bytes

Why each rule is safe (``make image-test`` runs the whole pipeline, export's ONNX round trip and the serving
checks in the trimmed image; that run is the proof, these are the reasons):

- ``tests`` folders and ``*_test.py`` beside kfp's modules: the packages' own test suites, never imported.
- C/C++ headers and sources, Cython sources, static libraries, type stubs (``.pyi``): only a compiler or a type
  checker reads them, and the image has neither (no compiler: ``train.compile`` cannot work in it anyway).
  Headers and sources kept under ``torch/`` and ``torchgen/``: code-generation templates, read as data.
- :data:`UNUSED_PATHS`: named binaries and tools nothing in a step loads (each with its reason there). Checked by
  tracing the libraries mapped (``/proc/self/maps``) and modules imported by every step, export and serving
  in the image: none of these was loaded.
- ``strip --strip-unneeded`` of every ELF shared object: removes the static symbol tables (``.symtab``,
  ``.strtab``) and debug sections, which the dynamic loader never reads; the dynamic symbols it resolves stay.
  Most wheels are repaired by auditwheel with patchelf, and stripping a patchelf-edited file has corrupted files
  with old tools: so each stripped file is compared with its original as the loader sees it
  (:func:`same_for_the_loader`: ELF header, program headers, and the bytes of every allocated section at its
  address) and the original is put back unless they are the same.
- Byte-identical shared libraries (pyarrow ships each ``libarrow_python.so*`` name as a full copy; numpy and
  scipy vendor the same libgfortran) become relative symlinks to one copy: the loader resolves the same bytes.

What the library does itself: nothing here is special to this project except :data:`UNUSED_PATHS`; pip has no
"install without tests/headers" switch, hence this script.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import fnmatch
import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

#: Paths (globs, relative to site-packages) deleted outright, with the reason each is never loaded.
UNUSED_PATHS: dict[str, str] = {
    "torch/include": "C++ headers for building extensions (no compiler in the image)",
    "torch/test": "torch's C++ test binaries",
    "torch/lib/lib*test*.so": "libraries of torch's C++ tests",
    "torch/bin/*": "torch's C++ test binaries (torch_shm_manager is kept: `import torch` checks for it)",
    "pyarrow/include": "C++ headers for building against Arrow",
    "pyarrow/src": "the C++ sources of pyarrow's Python bridge",
    "pyarrow/libarrow_flight.so*": "Arrow Flight RPC: not imported (pyarrow.flight only on demand)",
    "pyarrow/libarrow_python_flight.so*": "Arrow Flight RPC",
    "pyarrow/_flight.*.so": "Arrow Flight RPC",
    "pyarrow/libarrow_s3.so*": "S3 filesystem: pyarrow.fs imports its S3 support only if present",
    "pyarrow/_s3fs.*.so": "S3 filesystem",
    "pyarrow/_pyarrow_cpp_tests.*.so": "pyarrow's C++ tests",
    "onnx/backend/test": "ONNX's backend conformance data",
    "onnxruntime/capi/libonnxruntime.so*": "ONNX Runtime's C API library for C/C++ programs: the Python binding "
                                           "(onnxruntime_pybind11_state) links the runtime in and neither needs "
                                           "(DT_NEEDED) nor loads it",
    "onnxruntime/transformers": "ONNX Runtime's offline model optimisation tools (not imported by inference)",
    "onnxruntime/quantization": "ONNX Runtime's offline quantisation tools",
    "onnxruntime/tools": "ONNX Runtime's offline conversion tools",
    "torch/share": "CMake files for building C++ against libtorch",
    "*.dist-info/RECORD": "installed-file lists for `pip uninstall` (no pip in the image; stale after this trim); "
                          "importlib.metadata reads METADATA, entry points and top_level.txt",
    "PIL/_avif.*.so": "Pillow's AVIF codec (Pillow imports it optionally; matplotlib writes PNG)",
    "pillow.libs/libavif*": "the AVIF codec's library",
}
KEEP = {"torch/bin/torch_shm_manager"}
#: suffixes only a compiler or a type checker reads
BUILD_ONLY_SUFFIXES = (".h", ".hpp", ".c", ".cc", ".cpp", ".pyx", ".pxd", ".pxi", ".a", ".pyi")
#: top-level folders whose headers and C++ sources are read as data (code generation templates; stubs still go)
BUILD_SUFFIXES_KEPT_UNDER = ("torch", "torchgen")
DEDUPE_MIN_BYTES = 256 * 1024

def _size(path: Path) -> int:
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _remove(path: Path) -> int:
    size = _size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return size


def remove_unused(site: Path) -> dict[str, int]:
    """The :data:`UNUSED_PATHS`, test suites and build-only files; bytes freed per rule."""
    saved: dict[str, int] = {}
    for pattern in UNUSED_PATHS:
        for path in sorted(site.glob(pattern)):
            if str(path.relative_to(site)) not in KEEP:
                saved[pattern] = saved.get(pattern, 0) + _remove(path)
    for path in sorted(site.rglob("tests"), key=lambda p: -len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            saved["tests folders"] = saved.get("tests folders", 0) + _remove(path)
    for path in sorted((site / "kfp").rglob("*_test.py")) if (site / "kfp").is_dir() else ():
        saved["kfp *_test.py"] = saved.get("kfp *_test.py", 0) + _remove(path)
    for path in sorted(site.rglob("*")):
        rel = path.relative_to(site)
        if (path.is_file() and not path.is_symlink() and path.name.endswith(BUILD_ONLY_SUFFIXES)
                and (path.suffix == ".pyi" or rel.parts[0] not in BUILD_SUFFIXES_KEPT_UNDER)):
            key = "headers, sources, stubs (" + path.suffix + ")"
            saved[key] = saved.get(key, 0) + _remove(path)
    return saved


def is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def shared_objects(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*") if (p.name.endswith(".so") or ".so." in p.name) and is_elf(p))


PT_LOAD, PT_PHDR, PT_GNU_RELRO = 1, 6, 0x6474E552
#: program headers whose bytes the loader does not read as data: the mappings themselves, the program header
#: table (compared field by field), and RELRO (an mprotect range: its bytes are the sections' it covers)
NOT_READ = (PT_LOAD, PT_PHDR, PT_GNU_RELRO)
SHF_ALLOC, SHF_TLS, SHT_NOBITS, PT_TLS = 0x2, 0x400, 8, 7


def _elf(data: bytes) -> tuple[tuple, list[tuple], list[tuple]]:
    """(type, machine, entry), program headers, section headers of an ELF64 little-endian file (``man 5 elf``)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian file")
    e_type, e_machine, _, e_entry, e_phoff, e_shoff = struct.unpack_from("<HHIQQQ", data, 16)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 54)
    phdrs = [struct.unpack_from("<IIQQQQQQ", data, e_phoff + i * e_phentsize) for i in range(e_phnum)]
    shdrs = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)] \
        if e_shoff else []
    return (e_type, e_machine, e_entry), phdrs, shdrs


def _read_at(data: bytes, phdrs: list[tuple], vaddr: int, size: int) -> bytes | None:
    """The file bytes a PT_LOAD segment maps at ``vaddr`` (None where no segment's file part holds them)."""
    for p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ in phdrs:
        if p_type == PT_LOAD and p_vaddr <= vaddr and vaddr + size <= p_vaddr + p_filesz:
            return data[p_offset + vaddr - p_vaddr:p_offset + vaddr - p_vaddr + size]
    return None


def same_for_the_loader(original: bytes, stripped: bytes) -> bool:
    """Whether the dynamic loader and the code see the same thing in both files.

    Hand-written (no ELF library in the lock). Compared: the ELF header's type, machine and entry point; every
    program header's type, flags, addresses and alignment (file offsets and sizes may change: below); every
    allocated section's type, flags, address and size, and that it lies in a loaded (or the TLS) segment; the bytes every segment the loader reads (DYNAMIC,
    INTERP, NOTE, EH_FRAME, TLS, ...) points at; and the bytes of every allocated section of the original, read
    at its address through the PT_LOAD segments of each file. Not compared: file bytes no allocated section
    covers - the section headers and non-allocated sections strip removes, and leftovers patchelf left behind
    when it moved ``.dynamic``/``.dynstr`` (strip zeroes those; nothing refers to them).
    """
    head_a, ph_a, sh_a = _elf(original)
    head_b, ph_b, sh_b = _elf(stripped)
    # Segment sizes may change: strip shrinks the segments patchelf appended once it no longer writes the dead
    # copies they held. What must not change is every allocated section (checked below, bytes included), each
    # still inside a loaded segment's memory; and each segment's type, flags, address and alignment.
    key = lambda ph: [(t, f, va, pa, al) for t, f, _, va, pa, _, _, al in ph]  # noqa: E731
    if head_a != head_b or key(ph_a) != key(ph_b):
        return False
    alloc = lambda sh: sorted((typ, flags, addr, size) for _, typ, flags, addr, _, size, *_ in sh  # noqa: E731
                              if flags & SHF_ALLOC and size)
    if alloc(sh_a) != alloc(sh_b):
        return False
    # what glibc's loader refuses ("ELF load command address/offset not page-aligned"): strip can move a
    # patchelf-appended segment to an offset incongruent with its address
    if any(t == PT_LOAD and al > 1 and (va - off) % al for t, _, off, va, _, _, _, al in ph_b):
        return False
    loads_b = [(va, ms) for t, _, _, va, _, _, ms, _ in ph_b if t == PT_LOAD]
    tls_b = [(va, ms) for t, _, _, va, _, _, ms, _ in ph_b if t == PT_TLS]
    for typ, flags, addr, size in alloc(sh_a):
        inside = tls_b if flags & SHF_TLS else loads_b
        if not any(va <= addr and addr + size <= va + ms for va, ms in inside):
            return False
    ranges = [(va, fs) for t, _, _, va, _, fs, _, _ in ph_a if t not in NOT_READ and fs]
    ranges += [(addr, size) for _, typ, flags, addr, _, size, *_ in sh_a
               if flags & SHF_ALLOC and typ != SHT_NOBITS and size]
    return all(_read_at(original, ph_a, va, n) == _read_at(stripped, ph_b, va, n) for va, n in ranges)


def strip_one(path: Path, strip: str = "strip") -> tuple[int, str]:
    """Strip ``path``; (bytes saved, outcome). The original is put back unless the loader's view is unchanged."""
    original = path.read_bytes()
    proc = subprocess.run([strip, "--strip-unneeded", str(path)], capture_output=True, text=True)
    stripped = path.read_bytes()
    try:
        same = proc.returncode == 0 and same_for_the_loader(original, stripped)
    except (ValueError, struct.error):  # the stripped file does not even parse
        same = False
    if not same:
        path.write_bytes(original)
        return 0, "restored: strip failed" if proc.returncode else "restored: the loader's view changed"
    saved = len(original) - len(stripped)
    if saved <= 0:  # strip can grow a patchelf-edited file a little
        path.write_bytes(original)
        return 0, "nothing to strip"
    return saved, "stripped"


def strip_all(site: Path, workers: int = os.cpu_count() or 2) -> tuple[int, dict[str, int], dict[str, list[str]]]:
    """Strip every shared object under ``site``; (bytes saved, files per outcome, the files left unstripped)."""
    saved, outcomes, unstripped = 0, {}, {}
    files = shared_objects(site)
    with cf.ThreadPoolExecutor(workers) as pool:
        for path, (n, outcome) in zip(files, pool.map(strip_one, files)):
            saved += n
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome != "stripped" and outcome != "nothing to strip":
                unstripped.setdefault(outcome, []).append(str(path.relative_to(site)))
    return saved, outcomes, unstripped


def dedupe(site: Path, min_bytes: int = DEDUPE_MIN_BYTES) -> tuple[int, list[str]]:
    """Byte-identical shared objects -> relative symlinks to the first (sorted) copy; (bytes saved, links)."""
    groups: dict[tuple[int, str], list[Path]] = {}
    for path in shared_objects(site):
        size = path.stat().st_size
        if size >= min_bytes:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            groups.setdefault((size, digest), []).append(path)
    saved, links = 0, []
    for (size, _), paths in sorted(groups.items()):
        keep, *copies = paths
        for copy in copies:
            copy.unlink()
            copy.symlink_to(os.path.relpath(keep, copy.parent))
            saved += size
            links.append(f"{copy.relative_to(site)} -> {keep.relative_to(site)}")
    return saved, links


def trim(site: Path) -> dict:
    report: dict = {"removed_bytes": remove_unused(site)}
    report["strip_saved_bytes"], report["strip_outcomes"], report["left_unstripped"] = strip_all(site)
    report["dedupe_saved_bytes"], report["dedupe_links"] = dedupe(site)
    report["total_saved_bytes"] = (sum(report["removed_bytes"].values()) + report["strip_saved_bytes"]
                                   + report["dedupe_saved_bytes"])
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("site", type=Path, help="the venv's site-packages")
    args = p.parse_args(argv)
    if not fnmatch.fnmatch(args.site.name, "site-packages"):
        raise SystemExit(f"not a site-packages folder: {args.site}")
    print(json.dumps(trim(args.site), indent=1))


if __name__ == "__main__":
    main()

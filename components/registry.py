"""The model registry: versions and stages of the served retrieval model, kept by GTO as git tags.

GTO (Git Tag Ops, iterative/gto) turns a git repository into an artifact registry: a *registration*
``retrieval@v0.0.3`` is an annotated tag on the commit that holds the version, a stage assignment
``retrieval#prod#7`` (or an unassignment ``retrieval#prod!#8``) another tag. Teammates get the registry with the
repository (``git push --tags`` / ``git fetch --tags``); ``gto show`` / ``gto history`` read it with GTO's own CLI.

Two places a registry can live (:class:`Registry`):

- **the project repository** (``dvc repro`` on a workstation or in CI): a version is the commit whose ``dvc.lock``
  records the bundle under ``artifacts/bundles/<bundle>`` (pushed to the DVC remote with ``dvc push``). Promotion
  is a step after ``git commit``: ``python -m components.registry promote`` reads the committed gate verdict
  (``artifacts/export/verdict.json``), registers HEAD and assigns ``prod``. The tag points at the very commit
  whose lock a teammate ``dvc pull``s, so ``retrieval#prod`` always resolves to artifacts that exist.
- **a registry location** (a Kubeflow run, which has no git checkout; a PVC path or any local folder): a git
  repository created there by the first run, plus ``bundles/<bundle>/`` beside it (not in git: the bundles are
  large; they are immutable and content-addressed). Publishing copies the bundle in, commits a small record
  ``versions/<bundle>.json`` and registers that commit. This is the TFX resolver pattern: each run resolves the
  current production model from the location, and publishes to it.

Every version's tag message carries its bundle name (``bundle: <name>``): the bundle id is the content hash of
weights and config (components.export), so the same model is never registered twice, and re-promoting an old
bundle re-uses its version.

Stage semantics: exactly one version is in ``prod`` ("environment" semantics): promotion assigns the new
version and unassigns the old one; rollback unassigns the current version and re-assigns the previous one. Why the
current prod is computed here instead of with ``gto.api.find_versions_in_stage``: GTO orders events by the tag's
timestamp, which has one-second resolution, so two operations in the same second (a script, CI, a test) come out
in arbitrary order. Every stage tag carries GTO's own per-stage counter (``#N``), so replaying the stage events in
counter order gives the same answer whatever the clock says.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.io import DataError, cli_main, read_json, write_json

ARTIFACT = "retrieval"
STAGE = "prod"
DEFAULT_VERDICT = Path("artifacts/export/verdict.json")
DEFAULT_BUNDLES = Path("artifacts/bundles")
_BUNDLE_RE = re.compile(r"^bundle: (\S+)$", re.M)
_STAGE_TAG_RE = re.compile(r"^(?P<name>[^#@]+)#(?P<stage>[^#!]+)(?P<un>!?)#(?P<n>\d+)$")
_AUTHOR = {"author": "mir-registry", "author_email": "mir-registry@localhost"}


class RegistryError(RuntimeError):
    """A registry operation that cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class Version:
    version: str          # semver, e.g. v0.0.3
    bundle: str           # bundle folder name, <variant>-<hash12>
    commit: str           # the commit the registration tag points at
    created_at: str


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RegistryError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc


class Registry:
    """One artifact's versions and its ``prod`` stage in a git repository, with the bundles they name."""

    def __init__(self, repo: str | Path, bundles_dir: str | Path, *, artifact: str = ARTIFACT, stage: str = STAGE,
                 standalone: bool = False):
        self.repo = Path(repo)
        self.bundles_dir = Path(bundles_dir)
        self.artifact, self.stage, self.standalone = artifact, stage, standalone

    # -------------------------------------------------------------------------------------------- opening
    @classmethod
    def project(cls, root: str | Path = ".", bundles_dir: str | Path | None = None, **kw: Any) -> "Registry":
        """The registry of the project repository at ``root`` (bundles under ``artifacts/bundles``)."""
        root = Path(root).resolve()
        top = _git(root, "rev-parse", "--show-toplevel", check=False)
        if top.returncode != 0:
            raise RegistryError(f"{root.resolve()} is not inside a git repository: the project registry keeps "
                                "its versions as git tags (git init, or use a registry location: --registry PATH)")
        return cls(Path(top.stdout.strip()), bundles_dir if bundles_dir is not None else root / DEFAULT_BUNDLES,
                   **kw)

    @classmethod
    def location(cls, path: str | Path, **kw: Any) -> "Registry":
        """A standalone registry location (e.g. a PVC path), created on first use."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if not (path / ".git").exists():
            _git(path, "init", "-q")
            (path / ".gitignore").write_text("/bundles/\n")
            (path / "README.md").write_text(
                "Model registry location of multi-interest-retrieval: GTO tags in this git repository, "
                "bundles under bundles/ (see components/registry.py).\n")
            _git(path, "add", ".gitignore", "README.md")
            _commit(path, "registry: initialise")
        return cls(path, path / "bundles", standalone=True, **kw)

    # ---------------------------------------------------------------------------------------------- reads
    def versions(self) -> list[Version]:
        """Registered versions, oldest first."""
        out = []
        for tag, commit, date, message in self._tags(f"{self.artifact}@*"):
            m = _BUNDLE_RE.search(message)
            if m is None:
                continue  # a registration not made by this tool: no bundle to serve
            out.append(Version(tag.split("@", 1)[1], m.group(1), commit, date))
        return sorted(out, key=lambda v: _semver_key(v.version))

    def stage_events(self, versions: list[Version] | None = None) -> list[tuple[int, str, bool]]:
        """``(counter, version, assigned)`` of every stage tag, in GTO's counter order."""
        at_commit = {v.commit: v.version for v in (versions if versions is not None else self.versions())}
        events = []
        for tag, commit, _date, _msg in self._tags(f"{self.artifact}#{self.stage}*"):
            m = _STAGE_TAG_RE.match(tag)
            if m and m.group("stage") == self.stage and commit in at_commit:
                events.append((int(m.group("n")), at_commit[commit], not m.group("un")))
        return sorted(events)

    def prod(self) -> Version | None:
        """The version in the stage now, or None (no promotion yet, or everything unassigned)."""
        versions = self.versions()
        current: str | None = None
        for _n, version, assigned in self.stage_events(versions):
            if assigned:
                current = version
            elif version == current:
                current = None
        return next((v for v in versions if v.version == current), None)

    def previous(self) -> Version | None:
        """The version that was in the stage before the current one (the rollback target)."""
        versions = self.versions()
        cur = self.prod()
        for _n, version, assigned in reversed(self.stage_events(versions)):
            if assigned and (cur is None or version != cur.version):
                return next(v for v in versions if v.version == version)
        return None

    def bundle_path(self, version: Version) -> Path:
        """The bundle folder of ``version``; RegistryError when it is not here (not pulled)."""
        path = self.bundles_dir / version.bundle
        if not (path / "manifest.json").is_file():
            hint = ("dvc pull (the bundle is a DVC output of the registered commit)" if not self.standalone
                    else "the registry location lost its bundle folder")
            raise RegistryError(f"{self.artifact}@{version.version} names bundle {version.bundle}, which is not in "
                                f"{self.bundles_dir}: {hint}")
        return path

    def history(self) -> list[dict[str, Any]]:
        """Registrations and stage events, oldest first (the same journal as ``gto history``)."""
        versions = self.versions()
        rows: list[dict[str, Any]] = [{"event": "registration", "version": v.version, "bundle": v.bundle,
                                       "commit": v.commit[:7], "at": v.created_at} for v in versions]
        by_version = {v.version: v for v in versions}
        for n, version, assigned in self.stage_events(versions):
            rows.append({"event": f"{'assign' if assigned else 'unassign'} {self.stage}", "version": version,
                         "bundle": by_version[version].bundle if version in by_version else "?", "counter": n})
        return rows

    # --------------------------------------------------------------------------------------------- writes
    def register(self, bundle: str, ref: str = "HEAD") -> Version:
        """Register ``bundle`` at ``ref`` (a no-op returning the existing version if it is registered already)."""
        import gto.api

        for v in self.versions():
            if v.bundle == bundle:
                return v
        gto.api.register(self.repo, self.artifact, ref, message=f"register {bundle}\n\nbundle: {bundle}",
                         **_AUTHOR)
        return next(v for v in self.versions() if v.bundle == bundle)

    def assign(self, version: Version) -> Version:
        """Make ``version`` the only version in the stage."""
        import gto.api

        current = self.prod()
        if current is not None and current.version == version.version:
            return version
        gto.api.assign(self.repo, self.artifact, self.stage, version=version.version, force=True,
                       message=f"{self.stage}: {version.bundle}", **_AUTHOR)
        if current is not None:
            gto.api.unassign(self.repo, self.artifact, stage=self.stage, version=current.version, force=True,
                             message=f"{self.stage}: replaced by {version.version}", **_AUTHOR)
        return version

    def promote(self, bundle: str, ref: str = "HEAD") -> Version:
        """Register ``bundle`` (if new) and assign it the stage."""
        return self.assign(self.register(bundle, ref))

    def rollback(self, to: str | None = None) -> Version:
        """Re-assign the stage to ``to`` (a version or bundle name), by default the previous prod version."""
        target = self._resolve(to) if to else self.previous()
        if target is None:
            raise RegistryError(f"nothing to roll back to: {self.artifact} has had no other {self.stage} version")
        self.bundle_path(target)  # refuse a rollback to a bundle that cannot be served here
        return self.assign(target)

    def publish(self, bundle_dir: str | Path) -> Version:
        """Standalone location: copy a bundle in (if new), commit its record, register that commit."""
        if not self.standalone:
            raise RegistryError("publish is for a registry location; in the project repository commit dvc.lock "
                                "and run `python -m components.registry promote`")
        bundle_dir = Path(bundle_dir)
        name = bundle_dir.name
        for v in self.versions():
            if v.bundle == name:
                return v
        manifest = read_json(bundle_dir / "manifest.json")
        dst = self.bundles_dir / name
        if not (dst / "manifest.json").is_file():
            tmp = self.bundles_dir / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(bundle_dir, tmp)
            tmp.replace(dst)
        record = self.repo / "versions" / f"{name}.json"
        write_json(record, {"bundle": name, "model": manifest.get("model"),
                            "content_hash": manifest.get("content_hash"),
                            "published_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        _git(self.repo, "add", str(record.relative_to(self.repo)))
        _commit(self.repo, f"publish {name}")
        return self.register(name, "HEAD")

    # ---------------------------------------------------------------------------------------------- helpers
    def _tags(self, pattern: str) -> list[tuple[str, str, str, str]]:
        fmt = "%(refname:strip=2)%00%(*objectname)%00%(objectname)%00%(creatordate:iso-strict)%00%(contents)%01"
        proc = _git(self.repo, "for-each-ref", f"--format={fmt}", f"refs/tags/{pattern}")
        out = []
        for rec in proc.stdout.split("\x01"):
            rec = rec.lstrip("\n")
            if not rec:
                continue
            tag, peeled, obj, date, message = rec.split("\x00", 4)
            out.append((tag, peeled or obj, date, message))
        return out

    def _resolve(self, key: str) -> Version:
        for v in self.versions():
            if key in (v.version, v.bundle):
                return v
        raise RegistryError(f"{self.artifact} has no version or bundle named {key!r} "
                            f"(have: {', '.join(v.version + '=' + v.bundle for v in self.versions()) or 'none'})")


def _commit(repo: Path, message: str) -> None:
    _git(repo, "-c", "user.name=mir-registry", "-c", "user.email=mir-registry@localhost",
         "commit", "-q", "--no-verify", "-m", message)


def _semver_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def open_registry(location: str | Path | None, root: str | Path = ".") -> Registry:
    """The registry at ``location`` (a folder: standalone) or, when None/empty, the project's own."""
    return Registry.location(location) if location else Registry.project(root)


# ---------------------------------------------------------------------------------------------------- CLI
def promote_from_verdict(reg: Registry, verdict_path: Path, root: Path) -> Version:
    """Project registry: promote the bundle the committed verdict approved, at HEAD."""
    verdict = read_json(verdict_path, required=("promote", "export"))
    bundle = verdict["export"].get("candidate_bundle") if isinstance(verdict["export"], dict) else None
    if not bundle:
        raise DataError("verdict names no candidate bundle", path=verdict_path)
    if verdict["promote"] is not True:
        raise RegistryError(f"the gate did not approve {bundle} ({verdict_path}): "
                            + "; ".join(verdict.get("reasons") or ["see the verdict"]))
    reg.bundle_path(Version("?", bundle, "", ""))
    rel = [str(p) for p in (verdict_path, Path("dvc.lock")) if (root / p).exists()]
    dirty = _git(root, "status", "--porcelain", "--", *rel).stdout.strip()
    if dirty:
        raise RegistryError(f"commit the run first: {', '.join(rel)} differ from HEAD (a version is the commit "
                            "whose dvc.lock records the bundle: git add dvc.lock artifacts && git commit)")
    return reg.promote(bundle, "HEAD")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.registry",
                                     description="The model registry (GTO tags): show, history, promote, rollback.")
    parser.add_argument("--registry", default=None,
                        help="a registry location (folder); default: this project's git repository")
    parser.add_argument("--artifact", default=ARTIFACT)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show", help="versions and the current prod")
    sub.add_parser("history", help="registrations and stage events, oldest first")
    p = sub.add_parser("promote", help="register + assign prod: the bundle the committed gate verdict approved")
    p.add_argument("--verdict", type=Path, default=DEFAULT_VERDICT)
    p.add_argument("--bundle", default=None, help="registry location only: a bundle folder to publish + promote")
    r = sub.add_parser("rollback", help="re-assign prod to the previous version (or --to VERSION|BUNDLE)")
    r.add_argument("--to", default=None)
    sub.add_parser("prod", help="print the prod bundle's folder (exit 1 when there is none)")
    args = parser.parse_args(argv)

    def body() -> None:
        reg = open_registry(args.registry)
        reg.artifact = args.artifact
        if args.cmd == "show":
            cur = reg.prod()
            for v in reg.versions():
                mark = f"  <- {reg.stage}" if cur and v.version == cur.version else ""
                print(f"{reg.artifact}@{v.version}  {v.bundle}  {v.commit[:7]}  {v.created_at}{mark}")
            if cur is None:
                print(f"no version in {reg.stage}")
        elif args.cmd == "history":
            for row in reg.history():
                print("  ".join(f"{k}={v}" for k, v in row.items()))
        elif args.cmd == "promote":
            if args.bundle:
                v = reg.assign(reg.publish(args.bundle))
            else:
                v = promote_from_verdict(reg, args.verdict, reg.repo)
            print(f"{reg.artifact}@{v.version} ({v.bundle}) is {reg.stage}")
        elif args.cmd == "rollback":
            before = reg.prod()
            v = reg.rollback(args.to)
            print(f"rolled back {reg.stage}: {before.bundle if before else '(none)'} -> {reg.artifact}@{v.version} "
                  f"({v.bundle})")
        elif args.cmd == "prod":
            cur = reg.prod()
            if cur is None:
                print(f"no version in {reg.stage}", file=sys.stderr)
                raise SystemExit(1)
            print(reg.bundle_path(cur))

    try:
        cli_main(body)
    except RegistryError as exc:  # pragma: no cover - exercised through the CLI tests
        print(f"registry: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

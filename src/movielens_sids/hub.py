"""The Hugging Face Hub upload (one of the project's two network paths).

- The token comes from ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, a ``.env`` file (current folder or
  the run folder) or the Hub's own login (``hf auth login``), in that order. It is passed to
  ``huggingface_hub`` and nowhere else: never printed, logged, written or put in an error message
  (messages name where the token came from, and are scrubbed of it in case a library quotes it).
- Each repo gets its files in ONE commit (``HfApi.create_commit``), so a repo never holds half an
  upload; the experiment name becomes a tag on that commit. The account is checked (``whoami``)
  before anything is created, so no network or a bad token uploads nothing.
- ``dry_run`` lists exactly the files, sizes and destinations, and uploads nothing.

May import: errors; huggingface_hub and python-dotenv on first use (the only network I/O besides
``data.fetch``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SidsError

log = logging.getLogger(__name__)

PLACEHOLDER_USER = "<your-username>"
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
MODEL_FILES = ("README.md", "config.json", "model.safetensors", "train_metrics.json")
"""What of ``model/`` goes to the Hub (not the Lightning checkpoints and logs)."""


@dataclass
class RepoUpload:
    """One repo's planned commit."""

    repo_id: str
    repo_type: str
    """``model`` or ``dataset``."""
    files: list[tuple[str, Path]] = field(default_factory=list)
    """(path in the repo, local file), sorted by path in the repo."""

    def describe(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "repo_type": self.repo_type,
                "files": [{"path_in_repo": p, "local": str(f), "bytes": f.stat().st_size} for p, f in self.files]}


def resolve_token(search_dirs: list[Path] | None = None) -> tuple[str | None, str]:
    """Find a Hub token without printing it.

    Returns:
        ``(token, where)``: ``where`` says where it came from (``"HF_TOKEN"``, ``".env (HF_TOKEN)"``,
        ``"the Hugging Face login"``) and is safe to show; ``(None, "")`` when there is none.
    """
    for var in TOKEN_VARS:
        if os.environ.get(var, "").strip():
            return os.environ[var].strip(), var
    from dotenv import dotenv_values

    seen = set()
    for d in [Path.cwd(), *(search_dirs or [])]:
        p = (Path(d) / ".env").resolve()
        if p in seen or not p.is_file():
            continue
        seen.add(p)
        values = dotenv_values(p)  # read only; os.environ is left alone
        for var in TOKEN_VARS:
            if (values.get(var) or "").strip():
                return values[var].strip(), f"{p} ({var})"
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # a broken token file is the same as none
        token = None
    if token:
        return token, "the Hugging Face login"
    return None, ""


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _api(token: str | None):
    from huggingface_hub import HfApi

    # HF_ENDPOINT is read now, not at import time, so a later change of the variable is honoured.
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


def _hub_error(e: BaseException, token: str | None, where: str, doing: str) -> SidsError:
    """A one-line error for a failed Hub call; the token never appears in it."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if isinstance(e, OfflineModeIsEnabled):
        msg = f"cannot {doing}: HF_HUB_OFFLINE is set; unset it to push (or use --dry-run)"
    elif _is_network_error(e):
        msg = (f"cannot {doing}: the Hugging Face Hub at {endpoint} is unreachable ({type(e).__name__}); "
               "check the network or HF_ENDPOINT, or use --dry-run to see what would be uploaded")
    elif isinstance(e, HfHubHTTPError) and getattr(e.response, "status_code", None) in (401, 403):
        msg = (f"cannot {doing}: the Hub refused the token from {where} "
               f"({e.response.status_code}); it needs write access")
    else:
        msg = f"cannot {doing}: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return SidsError(_scrub(msg, token))


def _is_network_error(e: BaseException) -> bool:
    """True for a failure to talk to the server at all, anywhere in the chain of causes: the standard
    library's ``ConnectionError`` / ``TimeoutError``, or an error of the Hub library's HTTP client
    (``huggingface_hub.errors.HTTPError``, whichever client that is) that is not an HTTP answer
    (``HfHubHTTPError``): a refused connection, a timeout, a proxy or protocol failure."""
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if isinstance(e, HTTPError) and not isinstance(e, HfHubHTTPError):
            return True
        e = e.__cause__ or e.__context__
    return False


def plan_uploads(run_dir: Path, *, model_repo: str, dataset_repo: str) -> list[RepoUpload]:
    """The files of ``model/`` and ``dataset/`` that an upload sends, by repo."""
    run_dir = Path(run_dir)
    model = RepoUpload(model_repo, "model")
    for name in MODEL_FILES:
        p = run_dir / "model" / name
        if p.is_file():
            model.files.append((name, p))
    dataset = RepoUpload(dataset_repo, "dataset")
    root = run_dir / "dataset"
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            dataset.files.append((p.relative_to(root).as_posix(), p))
    for up in (model, dataset):
        up.files.sort()
        if not up.files:
            raise SidsError(f"nothing to upload for {up.repo_type} repo {up.repo_id}: run `movielens-sids export` "
                            "first")
    return [model, dataset]


def hub_user(token: str | None, where: str) -> str:
    """The account name of the token (``whoami``); a one-line ``SidsError`` if the Hub is unreachable."""
    try:
        info = _api(token).whoami()
    except Exception as e:
        raise _hub_error(e, token, where, "check the Hub account") from None
    return str(info["name"])


def push(uploads: list[RepoUpload], *, token: str, where: str, private: bool, revision: str,
         message: str) -> list[dict[str, Any]]:
    """Upload each repo's files in one commit and tag it ``revision``.

    Returns:
        Per repo: repo_id, repo_type, commit (oid), url, tag.
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    api = _api(token)
    done: list[dict[str, Any]] = []
    for up in uploads:
        what = f"upload the {up.repo_type} to {up.repo_id}"
        try:
            api.create_repo(up.repo_id, repo_type=up.repo_type, private=private, exist_ok=True)
            ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in up.files]
            info = api.create_commit(up.repo_id, ops, repo_type=up.repo_type, commit_message=message)
            oid = getattr(info, "oid", None)
            try:
                api.create_tag(up.repo_id, tag=revision, revision=oid, repo_type=up.repo_type)
            except HfHubHTTPError as e:  # the tag exists (an earlier push of this experiment): move it
                if getattr(e.response, "status_code", None) != 409:
                    raise
                api.delete_tag(up.repo_id, tag=revision, repo_type=up.repo_type)
                api.create_tag(up.repo_id, tag=revision, revision=oid, repo_type=up.repo_type)
        except Exception as e:
            err = _hub_error(e, token, where, what)
            if done:
                already = ", ".join(f"{d['repo_id']} (commit {d['commit']})" for d in done)
                err = SidsError(f"{err}; already uploaded, complete: {already}; run the push again to finish")
            raise err from None
        done.append({"repo_id": up.repo_id, "repo_type": up.repo_type, "commit": oid,
                     "url": str(getattr(info, "commit_url", "")), "tag": revision})
        log.info("uploaded %d files to %s %s (tag %s)", len(up.files), up.repo_type, up.repo_id, revision)
    return done


def format_plan(uploads: list[RepoUpload], *, revision: str, private: bool) -> str:
    """The dry-run listing: every file, its size and where it would go."""
    lines = []
    for up in uploads:
        total = sum(f.stat().st_size for _, f in up.files)
        lines.append(f"{up.repo_type} repo {up.repo_id} ({'private' if private else 'public'}), one commit "
                     f"tagged {revision!r}: {len(up.files)} files, {_size(total)}")
        width = max(len(p) for p, _ in up.files)
        for p, f in up.files:
            lines.append(f"  {p.ljust(width)}  {_size(f.stat().st_size):>9}  <- {f}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"

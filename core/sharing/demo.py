"""Demo mode: a studio presenting one bundle read-only, unpacked once into its own folder."""

from __future__ import annotations

import shutil

from pydantic import ValidationError

from core.errors import ModelNotAvailableError
from core.knowledge.store import KnowledgeStore
from core.model import loading
from core.settings import Settings
from core.sharing.bundle import (
    BundleError,
    Manifest,
    read_bundle,
    sha256,
)
from core.sharing.export import SHARED_SETTINGS, Progress, quiet
from core.sharing.importing import import_bundle


def _check_model_available(spec: str, settings: Settings, role: str) -> None:
    source = loading.describe_model(spec, settings)
    if source.path is None and (settings.offline or not loading.hub_reachable()):
        raise ModelNotAvailableError(
            f"This demo needs the {role} '{spec}', which is not on this machine, and the "
            "Hugging Face Hub cannot be reached to download it. Download it where there is "
            "internet and start the demo again."
        )


def _demo_model(bundled: str, here: str, role: str) -> str:
    """The model a demo runs on: this studio's own when it is the same one, else the bundle's
    (an embedded model or a Hub id; a folder on its maker's machine cannot be found here)."""
    if not bundled or loading.shared_name(here) == bundled:
        return here
    if bundled.startswith("folder:"):
        raise ModelNotAvailableError(
            f"This demo was made with a model from a folder called '{bundled[7:]}' on its maker's "
            f"machine. Copy that model here and set LRS_{role}_MODEL to its folder."
        )
    return bundled


def open_demo(settings: Settings, progress: Progress = quiet) -> Settings:
    """The settings of a studio presenting `settings.demo_bundle` read-only. The bundle is
    checked and unpacked once into its own folder (by content hash) under the data folder."""
    from filelock import FileLock

    path = settings.demo_bundle
    if path is None:
        return settings
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BundleError(
            f"The demo bundle '{path}' (LRS_DEMO_BUNDLE) cannot be read: {error.strerror}."
        ) from error
    digest = sha256(data)
    folder = settings.data_dir / "demos" / digest[:16]
    ready = folder / ".ready"
    bundle = None
    try:  # unpacked before: its manifest was kept, the bundle needs no second check
        manifest = Manifest.model_validate_json(ready.read_bytes())
    except (OSError, ValidationError):
        bundle = read_bundle(data, settings.max_bundle_mb * 1_000_000)
        manifest = bundle.manifest
    demo = settings.model_copy(
        update={
            "data_dir": folder,
            "model_cache_dir": settings.models_dir,
            "base_model": _demo_model(manifest.base_model, settings.base_model, "BASE"),
            "embedding_model": _demo_model(
                manifest.embedding_model, settings.embedding_model, "EMBEDDING"
            ),
            "chroma_host": None,  # a demo keeps its own copy, never touching a shared server
            "read_only": False,
            **{k: v for k, v in manifest.settings.items() if k in SHARED_SETTINGS},
        }
    )
    demo = type(settings).model_validate(demo.model_dump())  # re-check the bundle's settings
    _check_model_available(demo.base_model, demo, "chat model")
    _check_model_available(demo.embedding_model, demo, "search model")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{digest[:16]}.lock")):
        if not ready.exists():
            bundle = bundle or read_bundle(data, settings.max_bundle_mb * 1_000_000)
            shutil.rmtree(folder, ignore_errors=True)  # an unpacking that was cut short
            folder.mkdir(parents=True)
            import_bundle(demo, KnowledgeStore(demo, None), bundle, progress=progress)
            ready.write_text(manifest.model_copy(update={"files": {}}).model_dump_json())
    return demo.model_copy(update={"read_only": True})

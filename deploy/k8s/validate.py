#!/usr/bin/env python3
"""Renders every kustomize overlay of the billing services and validates what it renders.

For each overlay directory this runs `kubectl kustomize <dir>`, parses every document, checks it
against the Kubernetes OpenAPI schemas offline with kubernetes-validate (strict: an unknown field
is an error), and writes the rendered documents as one JSON list per overlay to
<out>/<overlay>.json. It exits non-zero, saying which document and field is wrong, on any error.

Usage:
    python deploy/k8s/validate.py --out DIR [--kubernetes-version 1.32.0] [OVERLAY_DIR...]

Without OVERLAY_DIR it takes every directory under deploy/k8s/overlays. kubectl comes from
$KUBECTL or PATH; kubernetes-validate from the virtualenv made by deploy/dev-deps.sh (run it
with that virtualenv's python).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# The Kubernetes version whose schemas the manifests must satisfy: the oldest cluster the
# deployment supports (the native preStop sleep needs 1.30 or later).
DEFAULT_KUBERNETES_VERSION = "1.32.0"

HERE = Path(__file__).resolve().parent


class Failure(Exception):
    """A problem worth one clear line to the operator."""


def import_validator():
    try:
        import kubernetes_validate
        import kubernetes_validate.utils
        import yaml
    except ImportError as error:
        raise Failure(
            f"{error.name} is not installed for {sys.executable}; run deploy/dev-deps.sh and use "
            "the python of the virtualenv it prints"
        ) from None
    return kubernetes_validate, yaml


def render(kubectl, overlay):
    try:
        result = subprocess.run(
            [kubectl, "kustomize", str(overlay)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise Failure(f"kubectl not found ({kubectl}); run deploy/dev-deps.sh") from None
    if result.returncode != 0:
        raise Failure(
            f"{overlay.name}: `{kubectl} kustomize {overlay}` failed:\n{result.stderr.strip()}"
        )
    return result.stdout


def describe(document, index):
    kind = document.get("kind", "?") if isinstance(document, dict) else "?"
    name = (document.get("metadata") or {}).get("name", "?") if isinstance(document, dict) else "?"
    return f"document {index} ({kind}/{name})"


def check_document(kubernetes_validate, document, index, version):
    """The problems of one rendered document, as lines."""
    if not isinstance(document, dict):
        return [f"{describe(document, index)}: not a mapping"]
    missing = [key for key in ("apiVersion", "kind", "metadata") if key not in document]
    if missing or not document["metadata"].get("name"):
        return [f"{describe(document, index)}: lacks {', '.join(missing) or 'metadata.name'}"]
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path) or "(top level)"
        return [f"{describe(document, index)}: {where}: {error.message}"]
    except (kubernetes_validate.SchemaNotFoundError,
            kubernetes_validate.utils.VersionNotSupportedError) as error:
        return [f"{describe(document, index)}: {error.message}"]
    return []


def validate_overlay(kubectl, overlay, version, out_dir):
    kubernetes_validate, yaml = import_validator()
    text = render(kubectl, overlay)
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise Failure(f"{overlay.name}: the rendered output is not YAML: {error}") from None
    if not documents:
        raise Failure(f"{overlay.name}: renders no document")

    problems = []
    seen = set()
    for index, document in enumerate(documents):
        problems += check_document(kubernetes_validate, document, index, version)
        if isinstance(document, dict) and isinstance(document.get("metadata"), dict):
            key = (document.get("kind"), document["metadata"].get("namespace"),
                   document["metadata"].get("name"))
            if key in seen:
                problems.append(f"{describe(document, index)}: defined twice")
            seen.add(key)
    if problems:
        raise Failure(
            f"{overlay.name}: {len(problems)} invalid document(s) for Kubernetes {version}:\n  "
            + "\n  ".join(problems)
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{overlay.name}.json"
    target.write_text(json.dumps(documents, indent=1, sort_keys=True) + "\n")
    kinds = sorted({doc["kind"] for doc in documents})
    print(
        f"validate: {overlay.name}: {len(documents)} documents valid for Kubernetes {version} "
        f"(strict): {', '.join(kinds)} -> {target}"
    )


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overlays", nargs="*", type=Path, help="overlay directories")
    parser.add_argument("--out", required=True, type=Path,
                        help="directory for <overlay>.json")
    parser.add_argument("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION,
                        help=f"schemas to validate against (default {DEFAULT_KUBERNETES_VERSION})")
    parser.add_argument("--kubectl", default=os.environ.get("KUBECTL", "kubectl"),
                        help="the kubectl to render with (default $KUBECTL or kubectl)")
    args = parser.parse_args(argv)

    overlays = args.overlays or sorted(p for p in (HERE / "overlays").iterdir() if p.is_dir())
    try:
        kubernetes_validate, _ = import_validator()
        supported = kubernetes_validate.utils.all_versions()
        wanted = ".".join(args.kubernetes_version.lstrip("v").split(".")[:2])
        if not any(v.startswith(wanted + ".") for v in supported):
            raise Failure(
                f"kubernetes-validate has no schemas for Kubernetes {args.kubernetes_version} "
                f"(it has {supported[0]} .. {supported[-1]})"
            )
        for overlay in overlays:
            if not (overlay / "kustomization.yaml").is_file():
                raise Failure(f"{overlay}: no kustomization.yaml there")
            validate_overlay(args.kubectl, overlay.resolve(), args.kubernetes_version, args.out)
    except Failure as failure:
        print(f"validate: FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

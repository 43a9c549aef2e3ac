"""Validates manifests offline: Kubernetes kinds against the API's own schemas
(kubernetes-validate, strict: unknown fields are errors), ironlb's kinds
against the CRDs' openAPIV3Schema (unknown fields are errors there too, as a
structural schema would prune them).

  validate.py CRDS_FILE KUBERNETES_VERSION FILE...
"""
import copy
import sys

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    """Unknown properties are errors wherever the schema lists properties."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if not isinstance(s, dict):
            return
        if "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s.setdefault("additionalProperties", False)
        for key in ("properties", "patternProperties"):
            for sub in s.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(s.get(key), dict):
                walk(s[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in s.get(key, []):
                walk(sub)

    walk(schema)
    return schema


def crd_schemas(path):
    schemas = {}
    with open(path) as f:
        for crd in yaml.safe_load_all(f):
            if not crd:
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                # metadata is the API server's to check.
                schema.get("properties", {}).pop("metadata", None)
                props = schema.setdefault("properties", {})
                props["metadata"] = {"type": "object"}
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def main():
    crds, version, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    schemas = crd_schemas(crds)
    failures = 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            what = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            try:
                if key in schemas:
                    jsonschema.validate(doc, schemas[key])
                elif str(doc.get("apiVersion", "")).startswith("ironlb.dev/"):
                    raise ValueError(f"no CRD defines {key}")
                else:
                    kubernetes_validate.validate(doc, version, strict=True)
                print(f"ok      {what}")
            except Exception as e:  # every validator's error is a finding
                failures += 1
                message = getattr(e, "message", str(e))
                print(f"INVALID {what}: {message}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

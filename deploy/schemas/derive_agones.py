#!/usr/bin/env python3
"""Derive the JSON schemas in agones-1.61/ from the Agones CRDs (run by hand, not in CI).

usage: derive_agones.py AGONES_CHECKOUT OUT_DIR

Reads the Helm-templated CRDs in AGONES_CHECKOUT/install/helm/agones/templates/crds, renders
the small part of Helm's template language they use (define/include/indent, if/with/range,
dict, the chart's default values and feature gates), takes each CRD's `openAPIV3Schema` and
writes it as JSON Schema: `x-kubernetes-*` and `nullable` translated, descriptions dropped,
and `additionalProperties: false` wherever the CRD lists properties without
`x-kubernetes-preserve-unknown-fields` (the API server prunes unknown fields there; we call
them errors). The embedded Pod template is replaced by a marker: deploy/check.py validates
it against Kubernetes' own PodTemplateSpec schema (kubernetes-validate), strictly.
"""
import json
import os
import re
import sys

import yaml

VALUES = {
    "Values": {
        "agones": {"crds": {"install": True}, "featureGates": ""},
        "gameservers": {"podPreserveUnknownFields": False, "lists": {"maxItems": 1000},
                        "selectableFields": [".status.state", ".status.nodeName"]},
    },
    "Release": {"Name": "agones", "Service": "Helm"},
}
GATES = {"ScheduledAutoscaler": True, "CountsAndLists": True}
ACTION = re.compile(r"{{(-?)(.*?)(-?)}}", re.S)


def tokens(text):
    out, pos = [], 0
    for m in ACTION.finditer(text):
        out.append(("text", text[pos:m.start()]))
        out.append(("act", m.group(2).strip(), m.group(1) == "-", m.group(3) == "-"))
        pos = m.end()
    out.append(("text", text[pos:]))
    # trim markers
    for i, t in enumerate(out):
        if t[0] == "act":
            if t[2] and i > 0:
                out[i - 1] = ("text", out[i - 1][1].rstrip())
            if t[3] and i + 1 < len(out):
                out[i + 1] = ("text", out[i + 1][1].lstrip())
    return out


def parse(toks, i=0, stop=("end",)):
    """Tokens -> tree: list of str | (kind, arg, body[, else])."""
    nodes = []
    while i < len(toks):
        t = toks[i]
        if t[0] == "text":
            nodes.append(t[1])
            i += 1
            continue
        a = t[1]
        word = a.split()[0] if a.split() else ""
        if a.startswith("/*"):
            i += 1
        elif word in stop:
            return nodes, i
        elif word in ("define", "if", "with", "range"):
            body, i = parse(toks, i + 1)
            nodes.append((word, a[len(word):].strip(), body))
            i += 1
        else:
            nodes.append(("expr", a, None))
            i += 1
    return nodes, i


DEFINES = {}


def lookup(path, ctx, vars_):
    if path == ".":
        return ctx
    if path.startswith("$"):
        name, _, rest = path[1:].partition(".")
        v = vars_[name]
        path = "." + rest if rest else "."
        return lookup(path, v, vars_) if rest else v
    v = ctx
    for part in path.strip(".").split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


def value(expr, ctx, vars_):
    expr = expr.strip()
    if expr.startswith("(") and expr.endswith(")"):
        return value(expr[1:-1], ctx, vars_)
    if expr in ("true", "false"):
        return expr == "true"
    if expr.startswith('"'):
        return expr.strip('"')
    if expr.startswith("dict "):
        parts = re.findall(r'"[^"]*"|\S+', expr[5:])
        return {parts[k].strip('"'): value(parts[k + 1], ctx, vars_) for k in range(0, len(parts), 2)}
    if expr.startswith("include "):
        return call_include(expr, ctx, vars_)
    if expr.startswith("template "):
        return "agones"
    if " | default " in expr:
        v = value(expr.split(" | default ")[0], ctx, vars_)
        return v if v else value(expr.split(" | default ")[1], ctx, vars_)
    return lookup(expr, ctx, vars_)


def call_include(expr, ctx, vars_):
    pipes = [p.strip() for p in expr.split("|")]
    m = re.match(r'include "([^"]+)"\s*(.*)$', pipes[0], re.S)
    name, arg = m.group(1), m.group(2).strip()
    if name == "agones.featureGates":
        out = yaml.safe_dump(GATES)
    else:
        out = render(DEFINES[name], value(arg, ctx, vars_), {})
    for p in pipes[1:]:
        if p.startswith("indent "):
            n = int(p.split()[1])
            out = "\n".join(" " * n + line for line in out.split("\n"))
        elif p == "fromYaml":
            out = yaml.safe_load(out)
    return out


def render(nodes, ctx, vars_):
    out = []
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
            continue
        kind, arg, body = n
        if kind == "define":
            DEFINES[arg.strip('"')] = body
        elif kind == "if":
            if value(arg, ctx, vars_):
                out.append(render(body, ctx, vars_))
        elif kind == "with":
            v = value(arg, ctx, vars_)
            if v:
                out.append(render(body, v, vars_))
        elif kind == "range":
            for item in value(arg, ctx, vars_) or []:
                out.append(render(body, item, vars_))
        elif ":=" in arg:
            name, _, e = arg.partition(":=")
            vars_[name.strip().lstrip("$")] = value(e, ctx, vars_)
        else:
            v = value(arg, ctx, vars_)
            out.append("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
    return "".join(out)


def to_json_schema(s, path=""):
    if not isinstance(s, dict):
        return s
    if path.endswith("/spec/template") and "properties" in s and "spec" in s["properties"] \
            and "containers" in s["properties"]["spec"].get("properties", {}):
        return {"type": "object", "x-p2pmodel-validate": "io.k8s.api.core.v1.PodTemplateSpec"}
    out = {}
    for k, v in s.items():
        if k in ("description", "title", "example", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                 "x-kubernetes-map-type", "x-kubernetes-validations", "nullable", "format"):
            continue
        if k == "properties":
            out[k] = {p: to_json_schema(sv, f"{path}/{p}") for p, sv in v.items()}
        elif k == "items":
            out[k] = to_json_schema(v, path + "/[]")
        elif k == "additionalProperties" and isinstance(v, dict):
            out[k] = to_json_schema(v, path + "/*")
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [to_json_schema(x, path) for x in v]
        elif k == "x-kubernetes-int-or-string":
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        elif k.startswith("x-kubernetes"):
            continue
        else:
            out[k] = v
    if s.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def main():
    src, out_dir = sys.argv[1], sys.argv[2]
    crds = os.path.join(src, "install/helm/agones/templates/crds")
    files = sorted(os.path.join(crds, f) for f in os.listdir(crds) if f.endswith(".yaml"))
    files += sorted(os.path.join(crds, "k8s", f) for f in os.listdir(os.path.join(crds, "k8s")))
    for f in [f for f in files if os.path.basename(f).startswith("_")]:
        render(parse(tokens(open(f).read()))[0], VALUES, {})
    os.makedirs(out_dir, exist_ok=True)
    for name in ("fleet", "fleetautoscaler", "gameserver"):
        doc = yaml.safe_load(render(parse(tokens(open(os.path.join(crds, name + ".yaml")).read()))[0], VALUES, {}))
        for v in doc["spec"]["versions"]:
            schema = to_json_schema(v["schema"]["openAPIV3Schema"])
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"const": f"{doc['spec']['group']}/{v['name']}"}
            props["kind"] = {"const": doc["spec"]["names"]["kind"]}
            props["metadata"] = {"type": "object"}
            props.pop("status", None)
            schema.setdefault("required", [])
            schema["required"] = sorted(set(schema["required"]) | {"apiVersion", "kind", "metadata"})
            schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
            schema["$comment"] = (f"Derived by deploy/schemas/derive_agones.py from Agones "
                                  f"install/helm/agones/templates/crds/{name}.yaml ({os.environ.get('AGONES_REF', '?')})")
            with open(os.path.join(out_dir, f"{name}-{v['name']}.json"), "w") as o:
                json.dump(schema, o, indent=1, sort_keys=True)
                o.write("\n")


if __name__ == "__main__":
    main()

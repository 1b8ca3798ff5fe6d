#!/usr/bin/env python3
"""Validate the manifests in deploy/k8s offline (CI runs this; docs/OPERATIONS.md says what
it does and does not prove).

usage: deploy/check.py [--k8s 1.33] [--bin PATH_TO_p2pmodel] [--dir deploy/k8s]

1. Schemas. Kubernetes objects against Kubernetes' JSON schemas (the PyPI package
   `kubernetes-validate`, which bundles them; strict: unknown fields are errors). Agones
   Fleet / FleetAutoscaler / GameServer against deploy/schemas/agones-1.61 (derived from the
   Agones CRDs by deploy/schemas/derive_agones.py), their Pod templates against Kubernetes'
   PodTemplateSpec (strict); GameServerAllocation against a schema written from its Go types.
2. Consistency the schemas cannot see: selectors match pod labels, Service target ports
   exist, every ConfigMap/Secret a pod mounts exists (Secrets: the operator-created ones
   listed below) with the keys it uses, the config's secret/key/store paths are mounted
   (the store writable), host ports match the config's ports, `--lobby` names a Service
   port, the Fleet declares the `players` Counter the SDK updates, the allocation selects
   the Fleet's labels and names Game servers that exist, the directory's `--keys` is mounted
   from its Secret and shard.toml's `[directory] address` names the directory Service's port.
3. With --bin: the ConfigMap's shard.toml loads with the real loader (`p2pmodel secret
   --show-public`, with a generated secret in place of the mounted one).

Prints one line per check and ends with `deploy: N passed, M failed`; exit 1 on a failure.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
# Secrets the operator creates with kubectl (never committed): name -> keys.
OPERATOR_SECRETS = {"p2pmodel-eu-1-secret": {"shard.secret"}, "p2pmodel-eu-1-relay-key": {"relay.key"},
                    "p2pmodel-directory-keys": {"keys.toml"}}
AGONES_SCHEMAS = os.path.join(HERE, "schemas", "agones-1.61")
AGONES_KINDS = {("agones.dev/v1", "Fleet"): "fleet-v1", ("agones.dev/v1", "GameServer"): "gameserver-v1",
                ("autoscaling.agones.dev/v1", "FleetAutoscaler"): "fleetautoscaler-v1",
                ("allocation.agones.dev/v1", "GameServerAllocation"): "gameserverallocation-v1"}
PLAYERS_COUNTER = "players"        # servers/src/agones.rs PLAYERS_COUNTER
GAMES_ANNOTATION = "p2pmodel.dev/games"

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))


def load_docs(folder):
    docs = []
    for f in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
        for d in yaml.safe_load_all(open(f)):
            if d:
                docs.append((os.path.basename(f), d))
    return docs


def kn(d):
    return f"{d['kind']}/{d['metadata'].get('name') or d['metadata'].get('generateName', '?')}"


def k8s_definitions(version):
    import kubernetes_validate.utils as kv
    vdir = "v%s-local-strict" % [v for v in kv.all_versions() if kv.major_minor(v) <= version][-1]
    return kv.schema_contents(f"kubernetes-json-schema/{vdir}/_definitions.json", version)


def validate_pod_template(tpl, defs):
    schema = dict(defs)
    schema["$ref"] = "#/$defs/io.k8s.api.core.v1.PodTemplateSpec"
    jsonschema.validators.Draft202012Validator(schema).validate(tpl)


def schemas(docs, version):
    import kubernetes_validate.utils as kv
    defs = k8s_definitions(version)
    for f, d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        try:
            if key in AGONES_KINDS:
                schema = json.load(open(os.path.join(AGONES_SCHEMAS, AGONES_KINDS[key] + ".json")))
                jsonschema.validators.Draft202012Validator(schema).validate(d)
                tpl = {"Fleet": lambda: d["spec"]["template"]["spec"]["template"],
                       "GameServer": lambda: d["spec"]["template"]}.get(d["kind"])
                if tpl:
                    validate_pod_template(tpl(), defs)
                what = f"Agones {AGONES_KINDS[key]} schema" + (" + Kubernetes PodTemplateSpec" if tpl else "")
            else:
                kv.validate(d, version, strict=True)
                what = f"Kubernetes {version} schema (strict)"
            check(f"{f} {kn(d)}", True, what)
        except (jsonschema.ValidationError, kv.ValidationError) as e:
            check(f"{f} {kn(d)}", False, f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}")
        except kv.SchemaNotFoundError as e:
            check(f"{f} {kn(d)}", False, e.message)


def pod_specs(docs):
    """(doc, pod spec, pod labels) for Deployments and the Fleet's GameServer pods."""
    for f, d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            yield d, d["spec"]["template"]["spec"], d["spec"]["template"]["metadata"].get("labels", {})
        elif d["kind"] == "Fleet":
            gs = d["spec"]["template"]
            yield d, gs["spec"]["template"]["spec"], gs.get("metadata", {}).get("labels", {})


def arg_after(args, flag):
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def consistency(docs):
    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    namespaces = {d["metadata"]["name"] for d in by_kind.get("Namespace", [])}
    for _, d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] != "Namespace":
            check(f"{kn(d)} namespace", ns in namespaces, f"{ns!r} is defined in deploy/k8s")
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    services = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}
    pvcs = {d["metadata"]["name"] for d in by_kind.get("PersistentVolumeClaim", [])}
    try:
        shard = tomllib.loads(configmaps["p2pmodel-eu-1"]["data"]["shard.toml"])
        relay = tomllib.loads(configmaps["p2pmodel-eu-1"]["data"]["relay.toml"])
    except (KeyError, tomllib.TOMLDecodeError) as e:
        check("ConfigMap p2pmodel-eu-1 shard.toml and relay.toml parse", False, str(e))
        return
    pods = list(pod_specs(docs))

    for d in by_kind.get("Deployment", []):
        sel = d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        check(f"{kn(d)} selector", sel.items() <= labels.items(), f"{sel} within the pod labels")
    for s in services.values():
        sel = s["spec"]["selector"]
        matched = [(d, spec) for d, spec, labels in pods if d["kind"] == "Deployment" and sel.items() <= labels.items()]
        check(f"{kn(s)} selects pods", len(matched) == 1, f"{[kn(d) for d, _ in matched]}")
        for d, spec in matched:
            names = {p.get("name") for c in spec["containers"] for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                check(f"{kn(s)} port {p['port']}", p.get("targetPort") in names, f"targetPort {p.get('targetPort')!r} in {sorted(names)}")

    for d, spec, _ in pods:
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for v in vols.values():
            if "configMap" in v:
                cm = configmaps.get(v["configMap"]["name"])
                keys = {i["key"] for i in v["configMap"].get("items", [])}
                check(f"{kn(d)} volume {v['name']}", cm is not None and keys <= set(cm.get("data", {})),
                      f"ConfigMap {v['configMap']['name']} with {sorted(keys)}")
            elif "secret" in v:
                name = v["secret"]["secretName"]
                check(f"{kn(d)} volume {v['name']}", name in OPERATOR_SECRETS, f"Secret {name} (created by the operator)")
            elif "persistentVolumeClaim" in v:
                check(f"{kn(d)} volume {v['name']}", v["persistentVolumeClaim"]["claimName"] in pvcs, "PVC defined")
        for c in spec["containers"]:
            args = c.get("args", [])
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            sc = spec.get("securityContext", {})
            check(f"{kn(d)} {c['name']} non-root", sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0
                  and c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, "runAsNonRoot, no privilege escalation")
            conf = arg_after(args, "--config")
            if conf:
                m = mounts.get(os.path.dirname(conf))
                key = os.path.basename(conf)
                vol = vols.get(m["name"]) if m else None
                check(f"{kn(d)} {c['name']} --config", vol is not None and "configMap" in vol and
                      any(i["path"] == key for i in vol["configMap"].get("items", [])), conf)
                cfg = relay if key == "relay.toml" else shard
                for path in [cfg.get("shard", {}).get("secret_file"), cfg.get("relay", {}).get("key_file")]:
                    if path and (key == "relay.toml") == (path.endswith("relay.key")):
                        m = mounts.get(os.path.dirname(path))
                        vol = vols.get(m["name"]) if m else None
                        ok = vol is not None and "secret" in vol and os.path.basename(path) in \
                            OPERATOR_SECRETS.get(vol["secret"]["secretName"], set())
                        check(f"{kn(d)} {c['name']} {path}", ok, "mounted from a Secret with that key")
                if "lobby" in args:
                    store = os.path.dirname(shard["lobby"]["store"])
                    m = mounts.get(store)
                    check(f"{kn(d)} store", m is not None and not m.get("readOnly") and
                          "persistentVolumeClaim" in vols.get(m["name"], {}), f"{store} on a writable PVC")
            keys = arg_after(args, "--keys")
            if args[:1] == ["directory"]:
                m = mounts.get(os.path.dirname(keys or ""))
                vol = vols.get(m["name"]) if m else None
                ok = keys is not None and vol is not None and "secret" in vol and os.path.basename(keys) in \
                    OPERATOR_SECRETS.get(vol["secret"]["secretName"], set())
                check(f"{kn(d)} {c['name']} --keys", ok, f"{keys} mounted from a Secret with that key")
                bind = arg_after(args, "--bind") or "0.0.0.0:7200"
                ports = {p.get("containerPort") for p in c.get("ports", [])}
                check(f"{kn(d)} {c['name']} --bind", int(bind.rpartition(":")[2]) in ports, f"{bind} is a container port")
            lobby = arg_after(args, "--lobby")
            if lobby:
                host, _, port = lobby.rpartition(":")
                svc = services.get(host.split(".")[0])
                ok = svc is not None and any(str(p["port"]) == port for p in svc["spec"]["ports"]) and \
                    (host.count(".") == 0 or host.split(".")[1] == svc["metadata"]["namespace"])
                check(f"{kn(d)} {c['name']} --lobby", ok, f"{lobby} is a Service port")
            if spec.get("hostNetwork"):
                want = {"agent": {shard["agent"]["port"], shard["agent"]["login_port"]},
                        "relay": {relay["relay"]["port"], relay["relay"]["alternate_port"]}}.get(args[1] if len(args) > 1 else "")
                have = {p.get("hostPort") for p in c.get("ports", []) if p.get("protocol") == "UDP"}
                check(f"{kn(d)} {c['name']} host ports", want is not None and want == have, f"UDP {sorted(have)} = config {sorted(want or [])}")
                check(f"{kn(d)} {c['name']} DNS", spec.get("dnsPolicy") == "ClusterFirstWithHostNet" or not lobby,
                      "ClusterFirstWithHostNet so --lobby resolves")

    directory = shard.get("directory", {}).get("address")
    if directory:
        host, _, port = directory.rpartition(":")
        svc = services.get(host.split(".")[0])
        ok = svc is not None and any(str(p["port"]) == port for p in svc["spec"]["ports"]) and \
            (host.count(".") == 0 or host.split(".")[1] == svc["metadata"]["namespace"])
        check("shard.toml [directory] address", ok, f"{directory} is a Service port")

    zones = shard["lobby"].get("zones", 1) * shard.get("game", {}).get("servers_per_zone", 1)
    fleets = {f["metadata"]["name"]: f for f in by_kind.get("Fleet", [])}
    for f in fleets.values():
        gs = f["spec"]["template"]
        args = gs["spec"]["template"]["spec"]["containers"][0].get("args", [])
        check(f"{kn(f)} runs shard game --agones", args[:2] == ["shard", "game"] and "--agones" in args, " ".join(args))
        check(f"{kn(f)} Counter {PLAYERS_COUNTER}", PLAYERS_COUNTER in gs["spec"].get("counters", {}),
              "declared (the SDK refuses undeclared Counters)")
    for a in by_kind.get("FleetAutoscaler", []):
        check(f"{kn(a)} fleet", a["spec"]["fleetName"] in fleets, a["spec"]["fleetName"])
    for a in by_kind.get("GameServerAllocation", []):
        for sel in a["spec"].get("selectors", []):
            labels = sel.get("matchLabels", {})
            hits = [n for n, f in fleets.items() if labels.items() <= f["spec"]["template"].get("metadata", {}).get("labels", {}).items()]
            check(f"{kn(a)} selects", hits != [], f"{labels} -> {hits}")
        meta = a["spec"].get("metadata", {})
        games = meta.get("annotations", {}).get(GAMES_ANNOTATION, "")
        nums = [int(g) for g in games.split(",") if g.strip().isdigit()]
        ok = len(nums) == len(games.split(",")) and all(0 <= g < zones for g in nums)
        check(f"{kn(a)} {GAMES_ANNOTATION}", ok, f"{games!r} within 0..{zones - 1}")
        marks = sorted(int(k.rsplit("-", 1)[1]) for k in meta.get("labels", {}) if re.match(r"p2pmodel\.dev/game-\d+$", k))
        check(f"{kn(a)} game labels", marks == sorted(nums), f"labels {marks} = annotation {sorted(nums)}")


def loader(docs, binary):
    cm = next(d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "p2pmodel-eu-1")
    with tempfile.TemporaryDirectory() as tmp:
        secret = subprocess.run([binary, "secret"], capture_output=True, text=True, check=True).stdout
        hexs = re.search(r'secret = "([0-9a-f]{64})"', secret).group(1)
        with open(os.path.join(tmp, "shard.secret"), "w") as f:
            f.write(hexs + "\n")
        text = cm["data"]["shard.toml"].replace("/run/secrets/p2pmodel/shard.secret", os.path.join(tmp, "shard.secret"))
        with open(os.path.join(tmp, "shard.toml"), "w") as f:
            f.write(text)
        r = subprocess.run([binary, "secret", "--show-public", "--config", os.path.join(tmp, "shard.toml")],
                           capture_output=True, text=True)
        check("ConfigMap p2pmodel-eu-1 shard.toml loads", r.returncode == 0, (r.stderr or r.stdout).strip()[:300])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s", default="1.33")
    ap.add_argument("--bin")
    ap.add_argument("--dir", default=os.path.join(HERE, "k8s"), help="the manifests (default deploy/k8s)")
    args = ap.parse_args()
    docs = load_docs(args.dir)
    schemas(docs, args.k8s)
    consistency(docs)
    if args.bin:
        loader(docs, args.bin)
    failed = results.count(False)
    print(f"deploy: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

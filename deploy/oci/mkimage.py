#!/usr/bin/env python3
"""Build the `p2pmodel` OCI image by hand: no base image, no registry, no daemon.

usage: mkimage.py --binary PATH --out DIR [--tag TAG] [--archive FILE]

The image is one layer holding the stripped binary, the shared libraries `ldd` says it loads
(glibc, libm, libgcc_s and the dynamic loader, copied from this host), /etc/passwd and
/etc/group with the unprivileged user `p2pmodel` (uid/gid 65532), /etc/nsswitch.conf, an
empty /etc/p2pmodel (the config is mounted there), /var/lib/p2pmodel owned by 65532 (the
Lobby's character store) and /tmp. The image config runs the binary as 65532:65532.

It writes an OCI image layout (https://github.com/opencontainers/image-spec, layout.md) in
DIR: `oci-layout`, `index.json` (the manifest tagged TAG) and `blobs/sha256/`: the gzipped
layer tar, the config and the manifest, each named by its SHA-256. The layer is
reproducible: entries sorted, owners numeric, modification times set to SOURCE_DATE_EPOCH
(default 0). `--archive FILE` also writes the layout as a tar (an `oci-archive`, what
`skopeo copy oci-archive:FILE docker://REGISTRY/p2pmodel:TAG` or `podman load -i FILE` take).

Prints one line of figures: the binary before/after strip, the layer (compressed and not)
and the image size (layer + config + manifest).
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

UID = GID = 65532
BIN_PATH = "usr/local/bin/p2pmodel"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def libraries(binary):
    """(path the loader looks up, file on this host) for every shared library and the loader."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"\S+ => (/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
        elif re.match(r"/\S+ \(0x", line):      # the dynamic loader (PT_INTERP)
            libs.append(line.split()[0])
        elif "not found" in line:
            sys.exit(f"mkimage: {binary}: {line}")
    return [(p.lstrip("/"), os.path.realpath(p)) for p in libs]


def add_dir(tar, name, mode=0o755, uid=0, gid=0, mtime=0):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = tarfile.DIRTYPE, mode, uid, gid, mtime
    tar.addfile(ti)


def add_file(tar, name, data, mode=0o644, mtime=0):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), mode, mtime
    tar.addfile(ti, io.BytesIO(data))


def layer_tar(files, mtime):
    """An uncompressed layer tar: `files` maps path -> (bytes, mode); parents are added."""
    dirs = {"etc/p2pmodel": (0o755, 0, 0), "var/lib/p2pmodel": (0o700, UID, GID), "tmp": (0o1777, 0, 0)}
    for path in list(files) + list(dirs):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.setdefault("/".join(parts[:i]), (0o755, 0, 0))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(set(dirs) | set(files)):
            if name in files:
                data, mode = files[name]
                add_file(tar, name, data, mode, mtime)
            else:
                mode, uid, gid = dirs[name]
                add_dir(tar, name, mode, uid, gid, mtime)
    return buf.getvalue()


def write_blob(out, data):
    digest = sha256(data)
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", default="latest")
    ap.add_argument("--archive")
    args = ap.parse_args()
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

    with tempfile.TemporaryDirectory() as tmp:
        stripped = os.path.join(tmp, "p2pmodel")
        subprocess.run(["strip", "--strip-all", "-o", stripped, args.binary], check=True)
        with open(stripped, "rb") as f:
            binary = f.read()
    files = {BIN_PATH: (binary, 0o755)}
    for inside, host in libraries(args.binary):
        with open(host, "rb") as f:
            files[inside] = (f.read(), 0o755)
    files["etc/passwd"] = (b"root:x:0:0:root:/root:/sbin/nologin\n"
                           b"p2pmodel:x:65532:65532:p2pmodel:/var/lib/p2pmodel:/sbin/nologin\n", 0o644)
    files["etc/group"] = (b"root:x:0:\np2pmodel:x:65532:\n", 0o644)
    # glibc >= 2.34 has the files and dns NSS modules built in: names resolve (a Kubernetes
    # Service for `--lobby`) with the resolv.conf and hosts the kubelet mounts.
    files["etc/nsswitch.conf"] = (b"passwd: files\ngroup: files\nhosts: files dns\n", 0o644)

    tar = layer_tar(files, mtime)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=9, mtime=0) as g:
        g.write(tar)
    layer = gz.getvalue()

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(os.path.join(args.out, "blobs", "sha256"))
    layer_digest, layer_size = write_blob(args.out, layer)
    created = "1970-01-01T00:00:00Z" if mtime == 0 else \
        __import__("datetime").datetime.fromtimestamp(mtime, __import__("datetime").timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{UID}:{GID}",
            "Entrypoint": ["/" + BIN_PATH],
            "Cmd": ["--help"],
            "Env": ["PATH=/usr/local/bin", "RUST_LOG=info"],
            "WorkingDir": "/var/lib/p2pmodel",
            "Labels": {
                "org.opencontainers.image.title": "p2pmodel",
                "org.opencontainers.image.description": "P2PModel shard roles (Agent, Lobby, Game, Punch/Relay) and operator tools",
                "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(tar)]},
        "history": [{"created": created, "created_by": "deploy/oci/mkimage.py (no base image)"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest, config_size = write_blob(args.out, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest, manifest_size = write_blob(args.out, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": args.tag},
        }],
    }
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True, separators=(",", ":"))
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    if args.archive:
        with tarfile.open(args.archive, "w") as a:
            for name in sorted(os.listdir(args.out)):
                a.add(os.path.join(args.out, name), arcname=name)

    mib = lambda n: f"{n / 1048576:.1f} MiB"  # noqa: E731
    print(f"image {args.tag}: {mib(layer_size + config_size + manifest_size)} "
          f"(layer {mib(layer_size)} gzipped, {mib(len(tar))} unpacked; binary "
          f"{mib(os.path.getsize(args.binary))} -> {mib(len(binary))} stripped; "
          f"{len(files) - 4} libraries); manifest {manifest_digest}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""mkimage.py OUT.tar REF ROOTFS_DIR [ENTRYPOINT...]

Packs a directory as a one-layer OCI image archive that `ctr -n k8s.io images import` takes,
named REF. Nothing can be pulled in the tests, so the images the cluster test's kubelets run
(kube-apiserver, etcd, pause, ...) are made here from the binaries built from source."""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

out, ref, rootfs, *entrypoint = sys.argv[1:]


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
    for name in sorted(os.listdir(rootfs)):
        t.add(os.path.join(rootfs, name), arcname=name)
raw = layer.getvalue()
compressed = gzip.compress(raw, mtime=0)
config = json.dumps({
    "architecture": "amd64",
    "os": "linux",
    "config": {"Entrypoint": entrypoint or None, "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
    "rootfs": {"type": "layers", "diff_ids": [digest(raw)]},
}).encode()
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(compressed), "size": len(compressed)}],
}).encode()
index = json.dumps({
    "schemaVersion": 2,
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest(manifest),
        "size": len(manifest),
        "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref},
    }],
}).encode()
with tarfile.open(out + ".tmp", "w") as t:
    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add("index.json", index)
    for blob in (compressed, config, manifest):
        add("blobs/sha256/" + digest(blob).split(":")[1], blob)
os.replace(out + ".tmp", out)

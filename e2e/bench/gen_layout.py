#!/usr/bin/env python3
"""Writes an OCI image layout of random-content images for the benchmarks.

usage: gen_layout.py OUT_DIR NAME_FORMAT COUNT LAYER_SIZE_MIB...
NAME_FORMAT gets the image number (`bench.local/x/img%02d:1`); each image has one gzip layer
per LAYER_SIZE_MIB of incompressible data (what compressed tarballs and binaries look like).
"""
import gzip, hashlib, io, json, os, sys, tarfile

out, name_format, count, sizes = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(s) for s in sys.argv[4:]]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d

manifests = []
for n in range(count):
    layers, diff_ids = [], []
    for i, mib in enumerate(sizes):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as t:
            payload = os.urandom(mib << 20)
            info = tarfile.TarInfo("img%02d-layer%d.bin" % (n, i))
            info.size = len(payload)
            t.addfile(info, io.BytesIO(payload))
        raw = raw.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        gz = gzip.compress(raw, compresslevel=1, mtime=0)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(gz), "size": len(gz)})
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
        "layers": layers}).encode()
    manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": name_format % n if "%" in name_format else name_format}})
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": manifests}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')

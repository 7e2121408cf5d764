#!/bin/bash
# Nodes run no etcd member; they get containerd and the registry mirrors only.
exit 0

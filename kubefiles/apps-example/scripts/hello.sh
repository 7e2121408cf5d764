#!/bin/sh
echo "kiln demo ${DemoVersion} on $(uname -m)"

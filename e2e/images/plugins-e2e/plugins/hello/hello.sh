#!/bin/bash
# Runs in its package directory: proves it with a file from beside it.
echo "$(date +%s.%N) $PluginPhase $PluginName $HostIP revision-2 $(basename "$PWD")" >> /var/log/kiln-e2e-plugins.log

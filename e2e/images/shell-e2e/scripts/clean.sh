#!/bin/bash
rm -rf /var/lib/kiln-e2e-shell

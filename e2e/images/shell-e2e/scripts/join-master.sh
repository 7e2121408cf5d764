#!/bin/bash
exec bash "$(dirname "$0")/record.sh" join-master

#!/usr/bin/env python3
"""Parses each Envoy bootstrap given on the command line as Envoy's own
protos do (`envoy.config.bootstrap.v3.Bootstrap`, from PyPI's
`xds-protos`, generated from envoyproxy/data-plane-api): every field
name, type and nesting, and every typed_config's `@type`, must be one
Envoy knows, as Envoy's loader would require. Exits 1 naming the file and
the field on the first mistake. Run by scripts/test.sh on the examples
under examples/envoy/.
"""
import importlib
import sys

import yaml
from google.protobuf import json_format

# The modules whose messages the examples' typed_configs name: importing
# one registers its types, so `@type` resolves. A new typed_config in an
# example needs its module here.
MODULES = [
    "envoy.config.bootstrap.v3.bootstrap_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.filters.http.lua.v3.lua_pb2",
    "envoy.extensions.filters.http.rate_limit_quota.v3.rate_limit_quota_pb2",
    "envoy.extensions.filters.http.ratelimit.v3.rate_limit_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.type.matcher.v3.http_inputs_pb2",
    "xds.type.matcher.v3.matcher_pb2",
]


def main(paths):
    for m in MODULES:
        importlib.import_module(m)
    from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

    failed = False
    for path in paths:
        with open(path) as f:
            doc = yaml.safe_load(f)
        try:
            b = json_format.ParseDict(doc, Bootstrap())
        except json_format.ParseError as e:
            print(f"{path}: not a valid Envoy bootstrap: {e}", file=sys.stderr)
            failed = True
            continue
        r = b.static_resources
        print(f"{path}: an Envoy bootstrap ({len(r.listeners)} listeners, {len(r.clusters)} clusters)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""A stock gRPC client that is not portwatch's own: Python grpcio and
grpcio-reflection, with no portwatch .proto file and no generated code.

It learns the admin API from the coordinator's reflection service, builds the
request and response types at run time from the descriptors it received, calls
the admin API with a bearer token, and asks the standard gRPC health service.
It prints one JSON object with what it saw; the Rust test
(stock_client.rs) judges it. Exit status 0 unless the client itself broke.

`--reflection v1alpha` is grpcio-reflection exactly as shipped: its descriptor
database speaks only `grpc.reflection.v1alpha.ServerReflection`.
`--reflection v1` points the same database at `grpc.reflection.v1` (the
messages are identical on the wire; only the service name differs), as
version-aware clients such as grpcurl do.
"""

import argparse
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True, help="host:port of the coordinator")
    ap.add_argument("--ca", required=True, help="PEM of the coordinator's CA")
    ap.add_argument("--token", required=True, help="a tenant token")
    ap.add_argument("--reflection", choices=["v1", "v1alpha"], default="v1alpha")
    args = ap.parse_args()

    with open(args.ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    channel = grpc.secure_channel(
        args.addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    grpc.channel_ready_future(channel).result(timeout=10)

    out = {}
    db = ProtoReflectionDescriptorDatabase(channel)
    if args.reflection == "v1":
        db._stub.ServerReflectionInfo = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
    out["reflection"] = args.reflection
    try:
        out["services"] = sorted(db.get_services())
    except grpc.RpcError as e:
        out["reflection_error"] = f"{e.code().name} {e.details()}"
        print(json.dumps(out))
        return 0
    pool = descriptor_pool.DescriptorPool(db)

    def call(service_name, method_name, body, token=None):
        """One unary call, request and response as JSON (proto3 JSON mapping)."""
        service = pool.FindServiceByName(service_name)
        method = service.methods_by_name[method_name]
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        stub = channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        request = json_format.ParseDict(body, request_type())
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            response = stub(request, metadata=metadata, timeout=10)
            return {"ok": json_format.MessageToDict(response)}
        except grpc.RpcError as e:
            return {"code": e.code().name, "message": e.details()}

    admin = "portwatch.v1.AdminService"
    out["who_am_i"] = call(admin, "WhoAmI", {}, args.token)
    out["regions"] = call(admin, "ListRegions", {}, args.token)
    out["created"] = call(
        admin,
        "CreateMonitor",
        {
            "name": "made by python",
            "host": "db.example.com",
            "port": 5432,
            "regions": ["r0"],
            "intervalMs": "60000",
            "timeoutMs": 2000,
            "consensus": "CONSENSUS_POLICY_UNANIMOUS",
        },
        args.token,
    )
    out["monitors"] = call(admin, "ListMonitors", {}, args.token)
    out["bad_port"] = call(
        admin,
        "CreateMonitor",
        {"host": "db.example.com", "port": 0, "regions": ["r0"]},
        args.token,
    )
    out["no_token"] = call(admin, "ListMonitors", {})

    health = "grpc.health.v1.Health"
    out["health"] = {
        name or "(server)": call(health, "Check", {"service": name})
        for name in ["", admin, "portwatch.v1.AgentService", "no.such.Service"]
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

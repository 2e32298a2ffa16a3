//! Compiles etcd's API protos with protox (pure Rust: no system protoc needed)
//! and generates prost messages and tonic services from them, and their JSON
//! (serde) for the HTTP gateway.

fn main() {
    let protos = [
        "proto/etcd/api/mvccpb/kv.proto",
        "proto/etcd/api/authpb/auth.proto",
        "proto/etcd/api/etcdserverpb/rpc.proto",
        "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"]).expect("etcd API protos compile");
    // JSON for etcd's HTTP gateway (`/v3/...`), as its grpc-gateway writes
    // it: proto field names, 64-bit integers as strings, bytes in base64,
    // enums by name, zero values left out; unknown fields are ignored.
    let descriptors = prost::Message::encode_to_vec(&fds);
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)
        .expect("etcd API descriptors")
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])
        .expect("generate the gateway's JSON code");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generate etcd API code");
}

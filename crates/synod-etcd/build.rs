//! Compiles etcd's API protos with protox (pure Rust: no system protoc needed)
//! and generates prost messages and tonic services from them.

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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generate etcd API code");
}

"""cc_grpc_proto: C++ message and gRPC stubs from .proto files, with Debian's protoc."""

def cc_grpc_proto(name, srcs, deps = [], visibility = None):
    """Generates <file>.pb.{h,cc} and <file>.grpc.pb.{h,cc} and a cc_library `name`.

    srcs are paths relative to the workspace root's package (the .proto import
    root is the workspace root, so imports read "protos/irqbypass/v1/x.proto").
    """
    outs = []
    hdrs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.cc", base + ".grpc.pb.cc"]
        hdrs += [base + ".pb.h", base + ".grpc.pb.h"]
    native.genrule(
        name = name + "_gen",
        srcs = srcs + [d + "_srcs" for d in deps],
        outs = outs + hdrs,
        cmd = " ".join([
            "protoc",
            "-I.",
            "--plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin",
            "--cpp_out=$(GENDIR)",
            "--grpc_out=$(GENDIR)",
        ] + ["$(location %s)" % s for s in srcs]),
    )
    native.filegroup(
        name = name + "_srcs",
        srcs = srcs,
        visibility = visibility,
    )
    native.cc_library(
        name = name,
        srcs = outs,
        hdrs = hdrs,
        deps = deps + ["@system//:grpc"],
        visibility = visibility,
    )

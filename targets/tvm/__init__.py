"""The Apache TVM targets: ``tvm-llvm`` and ``tvm-aarch64`` (cross-compiled, run under
qemu-user off Arm), with the ONNX import, schedules, tuning and build steps they share."""

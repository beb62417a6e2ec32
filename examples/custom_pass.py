"""A user pass in under 30 lines, registered and used from a pipeline string."""
import numpy as np
import onnx.parser

import greencc as gc
from greencc import ir


@gc.register_pass("fold-mul-one")
class FoldMulOne(gc.Pass):
    """Mul(x, 1) -> x, where the constant is exactly one and broadcasting changes nothing."""

    def call(self, model, ctx):
        folded = 0
        ir.infer_shapes(model.ir)  # fills value shapes in place, for the broadcast check
        for node in [n for n in model.graph if n.op_type == "Mul"]:
            x, one = node.inputs
            if one.const_value is None or one.const_value.size != 1 or one.const_value.numpy().item() != 1:
                continue
            if node.outputs[0] in model.graph.outputs or x.shape != node.outputs[0].shape:
                self.decline(ctx, node, "its output is a graph output, or broadcasting changes the shape")
                continue
            ir.replace_all_uses_with(node.outputs[0], x)
            model.graph.remove(node, safe=True)
            folded += 1
        return gc.PassResult(model, modified=folded > 0, stats={"folded": folded})


model = gc.load(onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y) <float one = {1.0}> { t = Mul(x, one)
 y = Relu(t) }"""))
compiled = gc.compile(model, target="ort-cpu", pipeline="fold-mul-one,cleanup")
print(compiled.report.to_console())
x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
assert np.array_equal(compiled({"x": x})["y"], np.maximum(x, 0))

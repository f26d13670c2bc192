//! The walk's [`Kernels`] on the GPU: cuDNN for convolutions and batch norm, cuBLAS for
//! dense layers, our NVRTC kernels for the rest, each launched on the model's stream.

use super::*;

impl CudaModel {
    /// With `PIPE_CUDA_SYNC=1`: wait for the device after each layer, so an asynchronous
    /// failure names the layer and direction it came from (graphs are off in that mode).
    pub(super) fn debug_check(&self, direction: &str, i: usize) -> Result<()> {
        if !self.debug_sync {
            return Ok(());
        }
        let nd = &self.net.graph.nodes[i];
        self.sync()
            .with_context(|| format!("{direction} of layer `{}` ({})", nd.name, nd.op.name()))
    }

    /// Row-major `C (m x n) = alpha * C + op(A) op(B)` expressed for column-major cuBLAS:
    /// the caller passes the column-major view (C^T = B^T A^T), see `Gpu::dense_forward`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        beta: f32,
        c: u64,
        ldc: usize,
    ) -> Result<()> {
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let alpha = 1f32;
        // SAFETY: a, b, c are device pointers into our buffers with the given leading
        // dimensions; alpha and beta are host scalars (cuBLAS's default pointer mode).
        unsafe {
            blas::sgemm(
                *self.blas.handle(),
                op(ta),
                op(tb),
                m as i32,
                n as i32,
                k as i32,
                &alpha,
                a as *const f32,
                lda as i32,
                b as *const f32,
                ldb as i32,
                &beta,
                c as *mut f32,
                ldc as i32,
            )
        }
        .map_err(|e| anyhow!("cuBLAS sgemm: {e:?}"))
    }
}

impl Launcher for CudaModel {
    fn max_blocks(&self) -> u32 {
        self.k.max_blocks
    }

    fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32),
        block: (u32, u32),
        args: &[launch::Arg],
    ) -> Result<()> {
        let f = *self
            .k
            .funcs
            .get(name)
            .ok_or_else(|| anyhow!("no kernel {name}"))?;
        launch::with_packed(args, |ptrs| {
            let (grid, block) = ((grid.0, grid.1, 1), (block.0, block.1, 1));
            // SAFETY: `f` is from our module; `args` match its C signature (the typed
            // launchers' contract); the slots live until the launch returns (it copies).
            let r = unsafe { drv::launch_kernel(f, grid, block, 0, self.cu(), ptrs) };
            dk(r, name)
        })
    }
}

/// The GPU device for one pass: the model's buffers and the descriptors for one batch
/// size. Conv and batch norm run in cuDNN, dense in cuBLAS, the rest in our kernels.
pub(super) struct Gpu<'a> {
    pub(super) m: &'a CudaModel,
    pub(super) sh: &'a Shaped,
}

impl Gpu<'_> {
    /// View `v` of the activation arena.
    fn a(&self, v: View) -> DMat {
        DMat::at(self.m.act.ptr, v)
    }

    /// View `v` of the gradient arena.
    fn g(&self, v: View) -> DMat {
        DMat::at(self.m.grad.ptr, v)
    }

    /// The cuDNN workspace: (address, bytes).
    fn ws(&self) -> (u64, usize) {
        (self.m.workspace.ptr, self.m.workspace.bytes)
    }

    /// Address of parameter `p`.
    fn param(&self, p: usize) -> u64 {
        self.m.params.f(self.m.poff[p])
    }

    /// Address of parameter `p`'s gradient.
    fn dparam(&self, p: usize) -> u64 {
        self.m.grads.f(self.m.poff[p])
    }

    /// The batch-norm statistics at offset `off`: (running mean, running var, saved mean,
    /// saved inverse std).
    fn stats(&self, off: usize) -> [u64; 4] {
        let m = self.m;
        [
            m.bn_mean.f(off),
            m.bn_var.f(off),
            m.save_mean.f(off),
            m.save_inv.f(off),
        ]
    }
}

impl Kernels for Gpu<'_> {
    type Error = anyhow::Error;

    fn end_node(&mut self, pass: Pass, i: usize, _dx: Option<View>, _n: usize) -> Result<()> {
        self.m.debug_check(pass.name(), i)
    }

    fn zero_param_grads(&mut self) -> Result<()> {
        self.m.zero(&self.m.grads, self.m.plen)
    }

    fn softmax_cross_entropy(&mut self, x: View, dx: View, n: usize) -> Result<()> {
        let m = self.m;
        launch::softmax_cross_entropy(
            m,
            self.a(x),
            (m.labels.ptr, m.labels2.ptr),
            n,
            self.g(dx),
            m.hyper.ptr,
            m.stats.ptr,
        )
    }

    fn l2_backward(&mut self, param: usize, l2: f64) -> Result<()> {
        let len = self.m.net.layout.params[param].len();
        launch::l2_backward(
            self.m,
            self.param(param),
            self.dparam(param),
            len,
            l2 as f32,
        )
    }

    fn conv2d_forward(
        &mut self,
        node: ParamNode,
        _g: &ConvGeom,
        x: View,
        y: View,
        n: usize,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.conv[&node.i]);
        let w = self.param(node.params.kernel());
        let (xp, yp) = (m.act.f(x.off), m.act.f(y.off));
        cudnn::conv_forward(m.dnn, d, (xp, w, yp), self.ws())?;
        if let Some(b) = node.params.bias {
            launch::bias_forward(m, self.a(y), self.param(b), y.rows(n))?;
        }
        Ok(())
    }

    fn conv2d_backward(
        &mut self,
        node: ParamNode,
        _g: &ConvGeom,
        x: View,
        dy: View,
        dx: Option<Dst>,
        n: usize,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.conv[&node.i]);
        let kp = node.params.kernel();
        let (xp, dyp) = (m.act.f(x.off), m.grad.f(dy.off));
        cudnn::conv_backward_filter(m.dnn, d, (xp, dyp, self.dparam(kp)), self.ws())?;
        if let Some(dx) = dx {
            let (w, dxp) = (self.param(kp), m.grad.f(dx.v.off));
            cudnn::conv_backward_data(m.dnn, d, (w, dyp, dxp), dx.acc, self.ws())?;
        }
        if let Some(b) = node.params.bias {
            launch::bias_backward(m, self.g(dy), self.dparam(b), dy.rows(n))?;
        }
        Ok(())
    }

    fn batchnorm_forward_train(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        rows: usize,
        epsilon: f64,
        momentum: f64,
        relu: bool,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.bn[&node.i]);
        let (gi, bi, k) = node.params.batchnorm();
        let [mean, var, save_mean, save_inv] = self.stats(m.boff[k]);
        // One value per channel (a batch of one flat vector): cuDNN's unbiased variance
        // would divide by zero; the CPU folds in variance 0. Same here, below.
        let single = rows == 1;
        let factor = if single { 0.0 } else { 1.0 - momentum };
        let (xp, yp) = (m.act.f(x.off), m.act.f(y.off));
        let (g, b) = (self.param(gi), self.param(bi));
        let (running, saved) = ((mean, var), (save_mean, save_inv));
        cudnn::batchnorm_forward_training(
            m.dnn,
            d,
            (xp, yp),
            (g, b),
            factor,
            running,
            epsilon,
            saved,
        )?;
        if single {
            launch::batchnorm_running_single(m, mean, var, save_mean, y.c, momentum as f32)?;
        }
        if relu {
            launch::relu_forward(m, self.a(y), self.a(y), rows)?;
        }
        Ok(())
    }

    fn batchnorm_forward_infer(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        rows: usize,
        epsilon: f64,
        relu: bool,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.bn[&node.i]);
        let (gi, bi, k) = node.params.batchnorm();
        let [mean, var, _, _] = self.stats(m.boff[k]);
        let (xp, yp) = (m.act.f(x.off), m.act.f(y.off));
        let (g, b) = (self.param(gi), self.param(bi));
        cudnn::batchnorm_forward_inference(m.dnn, d, (xp, yp), (g, b), (mean, var), epsilon)?;
        if relu {
            launch::relu_forward(m, self.a(y), self.a(y), rows)?;
        }
        Ok(())
    }

    fn batchnorm_backward(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        dy: View,
        dx: Option<Dst>,
        rows: usize,
        epsilon: f64,
        relu: bool,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.bn[&node.i]);
        if relu {
            // dy *= (y > 0), in place: the relu's gradient is this node's.
            launch::relu_backward(m, self.a(y), self.g(dy), self.g(dy), rows, false)?;
        }
        let (gi, bi, k) = node.params.batchnorm();
        let [_, _, save_mean, save_inv] = self.stats(m.boff[k]);
        // Without an input gradient, dx goes to the sink.
        let (dxp, acc) = match dx {
            Some(dx) => (m.grad.f(dx.v.off), dx.acc),
            None => (m.sink.ptr, false),
        };
        let (xp, dyp) = (m.act.f(x.off), m.grad.f(dy.off));
        let (g, dg, db) = (self.param(gi), self.dparam(gi), self.dparam(bi));
        let saved = (save_mean, save_inv);
        let bufs = (xp, dyp, dxp);
        cudnn::batchnorm_backward(m.dnn, d, bufs, acc, g, (dg, db), epsilon, saved)
    }

    fn relu_forward(&mut self, x: View, y: View, rows: usize) -> Result<()> {
        launch::relu_forward(self.m, self.a(x), self.a(y), rows)
    }

    fn relu_backward(&mut self, y: View, dy: View, dx: Dst, rows: usize) -> Result<()> {
        let (y, dy, dxm) = (self.a(y), self.g(dy), self.g(dx.v));
        launch::relu_backward(self.m, y, dy, dxm, rows, dx.acc)
    }

    fn elu_forward(&mut self, x: View, y: View, rows: usize, alpha: f64) -> Result<()> {
        launch::elu_forward(self.m, self.a(x), self.a(y), rows, alpha as f32)
    }

    fn elu_backward(&mut self, x: View, dy: View, dx: Dst, rows: usize, alpha: f64) -> Result<()> {
        let (x, dy, dxm) = (self.a(x), self.g(dy), self.g(dx.v));
        launch::elu_backward(self.m, x, dy, dxm, rows, alpha as f32, dx.acc)
    }

    fn maxpool_forward(&mut self, x: View, y: View, g: &PoolGeom, n: usize) -> Result<()> {
        let p = PoolArg::new(g, n, y.c);
        launch::maxpool_forward(self.m, self.a(x), self.a(y), p)
    }

    fn maxpool_backward(
        &mut self,
        x: View,
        y: View,
        dy: View,
        dx: Dst,
        g: &PoolGeom,
        n: usize,
    ) -> Result<()> {
        let p = PoolArg::new(g, n, y.c);
        let (x, y, dy, dxm) = (self.a(x), self.a(y), self.g(dy), self.g(dx.v));
        launch::maxpool_backward(self.m, x, y, dy, dxm, p, dx.acc)
    }

    fn avgpool_forward(&mut self, x: View, y: View, g: &PoolGeom, n: usize) -> Result<()> {
        let p = PoolArg::new(g, n, y.c);
        launch::avgpool_forward(self.m, self.a(x), self.a(y), p)
    }

    fn avgpool_backward(&mut self, dy: View, dx: Dst, g: &PoolGeom, n: usize) -> Result<()> {
        let p = PoolArg::new(g, n, dy.c);
        launch::avgpool_backward(self.m, self.g(dy), self.g(dx.v), p, dx.acc)
    }

    fn global_avgpool_forward(&mut self, x: View, y: View, n: usize) -> Result<()> {
        launch::global_avgpool_forward(self.m, self.a(x), self.a(y), n, x.hw)
    }

    fn global_avgpool_backward(&mut self, dy: View, dx: Dst, n: usize) -> Result<()> {
        let (dy, dxm) = (self.g(dy), self.g(dx.v));
        launch::global_avgpool_backward(self.m, dy, dxm, n, dx.v.hw, dx.acc)
    }

    fn dropout_forward(&mut self, x: View, mask: usize, y: View, rows: usize) -> Result<()> {
        let mask = self.m.act.f(mask);
        launch::dropout_forward(self.m, self.a(x), mask, self.a(y), rows)
    }

    fn dropout_backward(&mut self, mask: usize, dy: View, dx: Dst, rows: usize) -> Result<()> {
        let (mask, dy, dxm) = (self.m.act.f(mask), self.g(dy), self.g(dx.v));
        launch::dropout_backward(self.m, mask, dy, dxm, rows, dx.acc)
    }

    fn flatten_forward(&mut self, x: View, y: View, n: usize) -> Result<()> {
        // n rows of one image each: the input is packed (a flatten's input is its own).
        debug_assert_eq!(x.ld, x.c, "flatten reads a packed input");
        let len = x.hw * x.c;
        let src = DMat {
            ptr: self.m.act.f(x.off),
            ld: len,
            c: len,
        };
        launch::copy_rows(self.m, src, self.a(y), n, false)
    }

    fn flatten_backward(&mut self, dy: View, dx: Dst, n: usize) -> Result<()> {
        let len = dx.v.hw * dx.v.c;
        let dst = DMat {
            ptr: self.m.grad.f(dx.v.off),
            ld: len,
            c: len,
        };
        launch::copy_rows(self.m, self.g(dy), dst, n, dx.acc)
    }

    fn dense_forward(&mut self, node: ParamNode, x: View, y: View, n: usize) -> Result<()> {
        let m = self.m;
        let w = self.param(node.params.kernel());
        // Y (n x units) = X W: column-major Y^T = W^T X^T.
        m.gemm(
            false,
            false,
            y.c,
            n,
            x.c,
            w,
            y.c,
            m.act.f(x.off),
            x.ld,
            0.0,
            m.act.f(y.off),
            y.ld,
        )?;
        if let Some(b) = node.params.bias {
            launch::bias_forward(m, self.a(y), self.param(b), y.rows(n))?;
        }
        Ok(())
    }

    fn dense_backward(
        &mut self,
        node: ParamNode,
        x: View,
        dy: View,
        dx: Option<Dst>,
        n: usize,
    ) -> Result<()> {
        let m = self.m;
        let kp = node.params.kernel();
        let (cin, units) = (x.c, dy.c);
        let (xp, dyp) = (m.act.f(x.off), m.grad.f(dy.off));
        // dW (cin x units) = X^T dY: column-major dW^T = dY^T X.
        m.gemm(
            false,
            true,
            units,
            cin,
            n,
            dyp,
            dy.ld,
            xp,
            x.ld,
            0.0,
            self.dparam(kp),
            units,
        )?;
        if let Some(b) = node.params.bias {
            launch::bias_backward(m, self.g(dy), self.dparam(b), n)?;
        }
        if let Some(dx) = dx {
            // dX (n x cin) [+]= dY W^T: column-major dX^T = W dY^T.
            let (w, dxp) = (self.param(kp), m.grad.f(dx.v.off));
            let acc = if dx.acc { 1.0 } else { 0.0 };
            m.gemm(
                true, false, cin, n, units, w, units, dyp, dy.ld, acc, dxp, dx.v.ld,
            )?;
        }
        Ok(())
    }

    fn add_forward(&mut self, a: View, b: View, y: View, rows: usize) -> Result<()> {
        launch::add_forward(self.m, self.a(a), self.a(b), self.a(y), rows)
    }

    fn copy_rows(&mut self, arena: Arena, src: View, dst: Dst, rows: usize) -> Result<()> {
        let base = match arena {
            Arena::Act => self.m.act.ptr,
            Arena::Grad => self.m.grad.ptr,
        };
        let (s, d) = (DMat::at(base, src), DMat::at(base, dst.v));
        launch::copy_rows(self.m, s, d, rows, dst.acc)
    }

    fn softmax_forward(&mut self, x: View, y: View, rows: usize) -> Result<()> {
        launch::softmax_forward(self.m, self.a(x), self.a(y), rows)
    }

    fn softmax_backward(&mut self, y: View, dy: View, dx: Dst, rows: usize) -> Result<()> {
        let (y, dy, dxm) = (self.a(y), self.g(dy), self.g(dx.v));
        launch::softmax_backward(self.m, y, dy, dxm, rows, dx.acc)
    }
}

"""The schema every config shares (ml_collections). Config files start from ``get_default()``;
overrides on the command line may only set keys that exist here (or network options under model)."""

import ml_collections


def get_default():
    c = ml_collections.ConfigDict()
    c.seed = 42

    c.training = t = ml_collections.ConfigDict()
    t.batch_size = 128          # global batch, split over all devices
    t.n_iters = 1_300_001
    t.n_jitted_steps = 1        # train steps per compiled call (lax.scan)
    t.log_freq = 50
    t.snapshot_freq = 50_000    # checkpoint every ... steps (and at the end, and on SIGTERM)
    t.keep_last = 3             # checkpoints kept ...
    t.keep_period = 0           # ... plus every keep_period-th step (0: none)
    t.max_nonfinite = 10        # stop after this many NaN/Inf losses in a row
    t.label_dropout = 0.0       # class-conditional nets: P(label -> 'no class'), for classifier-free guidance
    t.continuous = True
    t.reduce_mean = False
    t.likelihood_weighting = False
    t.importance_sampling = False
    t.loss = "auto"             # dsm | edm | flow_matching | auto (edm for EDM and PFGM++,
                                # flow_matching for rectified flow and interpolants, dsm otherwise)
    t.p_mean = -1.2             # EDM loss: ln sigma ~ N(p_mean, p_std^2)
    t.p_std = 1.2
    t.time_sampling = "uniform"  # flow-matching loss: uniform | logit_normal
    t.fp_weight = 0.0           # continuous DSM: weight of the Fokker-Planck residual regulariser (0: off)
    t.fp_time_weighting = "sigma4_g4"  # its weight per t: none | g4 (1/g^4) | sigma4 | sigma4_g4 (sigma^4/g^4)
    t.fp_num_examples = 0       # examples of each batch it is computed on (third-order autodiff; 0: all)
    t.fp_divergence = "rademacher"  # grad(div s): rademacher (Hutchinson, two probes, unbiased) | exact (small d)

    c.sde = s = ml_collections.ConfigDict()
    s.name = "vesde"            # vesde | vpsde | subvpsde | edm | cosine | rectified_flow | interpolant | pfgmpp
    s.sigma_min = 0.01          # VE, EDM, PFGM++ (EDM's are 0.002 and 80)
    s.sigma_max = 50.0
    s.beta_min = 0.1            # VP, sub-VP
    s.beta_max = 20.0
    s.num_scales = 1000
    s.cosine_s = 0.008          # cosine: offset s and end time T
    s.t_max = 0.0               # cosine, rectified flow, interpolant: end time T (0: the process's default)
    s.interpolant_alpha = "linear"    # interpolant: linear | trig
    s.interpolant_gamma = "brownian"  # interpolant: zero | brownian | bsquared
    s.gamma_scale = 1.0
    s.pfgmpp_D = 128.0          # PFGM++: extra dimensions D (inf: EDM)
    s.sigma_data = 0.5          # EDM preconditioning (prediction "edm") and loss weighting

    c.model = m = ml_collections.ConfigDict()
    m.name = "ncsnpp_cifar10_ve_continuous"   # a network or preset of diffjax.models.get_model
    m.options = ml_collections.ConfigDict()   # options passed to get_model (override the preset's)
    m.ema_rate = 0.9999

    c.optim = o = ml_collections.ConfigDict()
    o.lr = 2e-4
    o.warmup = 5000
    o.grad_clip = 1.0
    o.beta1 = 0.9
    o.eps = 1e-8
    o.weight_decay = 0.0

    c.data = d = ml_collections.ConfigDict()
    d.dataset = "cifar10"       # digits | toy:<name> | a TFDS name
    d.data_dir = ""             # TFDS data directory ('' = TFDS default)
    d.image_size = 32
    d.num_channels = 3
    d.random_flip = True
    d.uniform_dequantization = False
    d.centered = True           # data in [-1, 1] (True) or [0, 1]
    d.classes = ""              # digits only: keep these classes, e.g. "0-4" or "0,2,5-7" ('' = all)

    c.sampling = sa = ml_collections.ConfigDict()
    sa.method = "pc"            # any samplers.get_step name, or "ode" (adaptive probability flow)
    sa.predictor = "reverse_diffusion"
    sa.corrector = "langevin"
    sa.snr = 0.16
    sa.langevin_steps = 1         # corrector steps per time step ("pc")
    sa.num_steps = 1000           # time steps of fixed-step samplers
    sa.grid = "uniform"         # samplers.TIME_GRIDS name, or "fitted" (to the data's Gaussian)
    sa.order = 0                # unipc / dpmpp_3m order (0: the sampler's default)
    sa.teleport = "off"         # off | auto | kappa: Gaussian teleport to sigma_hat = kappa sqrt(lam_max)
    sa.noise_removal = True     # finish with Tweedie's denoiser
    sa.ode_rtol = 1e-5          # method "ode": rtol = atol of the adaptive solver
    sa.num_samples = 64         # the PNG grid at the end of training (0: none)
    sa.batch_size = 256         # samples per compiled call
    sa.guidance_weight = 0.0    # classifier-free guidance w: (1 + w) s(x | y) - w s(x); autoguidance with sa.guide
    sa.guide = ""               # autoguidance: a weaker run of the same task (its work directory): (1 + w) s - w s_guide
    sa.solver = ""              # "": the options above; "fitted": the run's solver from `diffjax fit-solver`
                                # (WORKDIR/solvers/), or the path of a fitted solver's .npz
    sa.solver_nfe = 0           # with solver "fitted": the fitted solver of this many evaluations (0: the only one)
    sa.noise = "independent"    # stochastic steps: independent | brownian (one path per example, any grid)

    c.eval = e = ml_collections.ConfigDict()
    e.bpd_num_examples = 0      # test examples for bits/dim at the end of training (0: skip)
    e.bpd_rtol = 1e-5
    e.batch_size = 256          # examples per compiled call

    c.distill = di = ml_collections.ConfigDict()   # a student of another run (`diffjax distill`)
    di.method = ""              # "": not a student | consistency | progressive
    di.teacher = ""             # the teacher run's work directory
    di.teacher_step = -1        # its checkpoint (-1: the latest)
    di.target = "teacher"       # consistency: "teacher" (distillation, the teacher's Heun step) | "data" (training)
    di.stage_steps = 250        # consistency: training steps per stage of ECT's curriculum
    di.q = 2.0                  # consistency: ECT's curriculum base (r / t -> 1 as 1 - q^-(stage + 1))
    di.p_mean = -1.1            # consistency: log-normal noise levels sigma^ = sigma / a
    di.p_std = 2.0
    di.huber_c = -1.0           # consistency: pseudo-Huber c (< 0: iCT's 0.00054 sqrt(d); 0: the plain norm)
    di.num_steps = 1            # progressive: the student's DDIM steps (its teacher takes twice as many)

    c.parallel = p = ml_collections.ConfigDict()
    p.fsdp = 1                  # size of the fsdp mesh axis (1: data parallel)
    return c

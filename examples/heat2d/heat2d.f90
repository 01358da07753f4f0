! heat2d: a 2-D heat-equation simulation that trains a transformer surrogate
! of its own time step while it runs.
!
!   mpiexec -n 4 ./heat2d [parameters.nml]
!
! The solver: u_t = kappa lap(u) - c u + q(x, y, t) on the periodic unit
! square, explicit finite differences (5-point Laplacian, forward Euler), on
! an nx x ny grid split over the ranks by MPI_Cart_create, with a one-cell
! halo exchanged every step. q is two Gaussian spots, one heating and one
! cooling, moving through the domain, so the field keeps changing; c is a
! weak cooling that bounds it.
!
! The surrogate learns one solver step on patches: every push_every steps
! each rank cuts patches_per_push P x P patches out of its own subdomain at
! random places. A sample is one patch: T = P*P tokens (grid points), each
! carrying F_in = 6 features, the 5-point stencil of u(t) (u, then the four
! neighbours as differences to u) and the source increment at that point (a
! point's next value depends on its neighbours, so giving each token its
! stencil lets the surrogate get patch edges right); the target is
! u(t + dt) at the same points (F_out = 1), learned as the increment of u
! (model.residual) on normalised features (data.normalize). In Fortran the
! samples are x(6, T, n) and y(1, T, n), exactly the C layout [n][T][F].
!
! Every output_every steps rank 0 prints one line: the last training loss and
! the surrogate's relative L2 error on patches of the current step, made
! before that step is pushed (never trained on), next to the error of
! predicting no change at all. At the end test_steps further solver steps,
! never pushed, are predicted tile by tile over the whole domain. Metrics go
! to a JSON-lines file (see plot.sh).
!
! Whole-field mode (mode = 'field', or 'both' to train the two surrogates
! side by side on the same steps): a sample is the whole field at one step,
! spread over all ranks by context parallelism (parallel.cp = the number of
! ranks). Each rank turns its subdomain into tokens of field_patch x
! field_patch points with insitra_field_to_patches (each point carrying the
! same six features as above, so a token has 6 * field_patch**2 features and
! predicts field_patch**2 values) and pushes them as its slice of one global
! sample every push_every steps: T = nx ny / field_patch**2 tokens, T / cp
! on each rank. The global token order is the ranks' blocks one after
! another in the rank order of the Cartesian communicator (the trainer's
! cp rank), each block in the helper's order, so rank c holds tokens
! [c T/cp, (c+1) T/cp) of every sample, as context parallelism expects; the
! blocks must all hold the same number of tokens (nx and ny divisible by the
! ranks along them times field_patch). predict returns each rank's own
! tokens, which insitra_patches_to_field turns back into its subdomain. The
! held-out test then predicts each further step's whole field at once, and
! the final table compares the surrogates trained and 'no change' on the
! same steps and points. With mode = 'both' checkpoints are refused (they
! would hold the simulation's state with one of the two surrogates).
!
! spinup: the first solver steps run without pushing or training. The
! initial field's short waves decay within a few hundred steps on a small
! grid; frozen normalisation statistics taken from them would not fit the
! later, source-driven steps.
!
! Parameters: the namelist &parameters below, read from the file given as the
! first argument (every rank reads it); any parameter left out keeps its
! default. The surrogate's configuration is built in (surrogate_yaml below);
! a YAML file named by `surrogate` overrides any of its keys.
!
! Checkpoints (checkpoint_dir, or the YAML's checkpoint.dir): a job that is
! stopped and started again must continue two things: the surrogate
! (weights, AdamW moments, the step, the samplers and, with include_samples,
! the sample stores) and the simulation, the field u, the solver step and
! each rank's patch generator. Restarting the surrogate without the field
! would train it on a simulation started over from t = 0; restarting the
! field without the surrogate would throw the training away. So heat2d adds
! its own state to insitra's checkpoints (trainer%checkpoint_add_array and
! checkpoint_add_scalar): every step-N.h5, written by train_step every
! checkpoint_every training steps and when a stop is requested, holds both
! under one commit and one set of checksums, and keep_last retires both
! together. On start, a directory with an unfinished run is resumed from its
! newest checkpoint that verifies, so a requeued job continues exactly where
! it stopped. SIGUSR1 or SIGTERM (the batch system's warning) or
! checkpoint.deadline_* make the next training step write the checkpoint;
! heat2d then leaves the time loop, says so, and exits with status 0
! (examples/batch has Slurm and PBS scripts that requeue it).
program heat2d
  use, intrinsic :: iso_c_binding, only: c_float, c_double, c_int64_t
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use mpi_f08
  use insitra
  implicit none

  integer, parameter :: dp = c_double
  integer, parameter :: F_IN = 6, F_OUT = 1
  real(dp), parameter :: PI = 3.14159265358979323846_dp

  ! ---- parameters (namelist &parameters) ----
  integer :: nx = 256, ny = 256          ! global grid
  integer :: steps = 4000                ! solver steps while training
  integer :: spinup = 0                  ! of those, the first ones run before any push or training
  integer :: push_every = 2              ! K: push samples and train every K steps
  integer :: output_every = 250          ! progress line and metrics record
  integer :: patch = 8                   ! P: patches are P x P grid points
  integer :: patches_per_push = 8        ! samples each rank pushes every K steps
  integer :: eval_patches = 64           ! samples per rank for the progress error
  integer :: test_steps = 20             ! held-out solver steps at the end
  real(dp) :: diffusion_number = 0.2_dp  ! r = kappa dt / h^2 (stable below 0.25)
  real(dp) :: cooling = 0.002_dp         ! c dt
  real(dp) :: source_strength = 0.02_dp  ! peak q dt of a spot
  real(dp) :: max_test_error = 0         ! > 0: fail unless every held-out error is below it
  real(dp) :: min_gain = 0               ! > 0: fail unless every surrogate beats 'no change' by this factor
  character(len=8) :: mode = 'patch'     ! patch, field (one sample = the whole field) or both
  integer :: field_patch = 4             ! whole-field tokens are field_patch x field_patch points
  integer :: seed = 2024
  character(len=256) :: surrogate = ''   ! YAML file overriding the built-in surrogate config
  character(len=256) :: field_surrogate = ''  ! the same for the whole-field surrogate
  character(len=256) :: metrics = 'heat2d.jsonl'
  character(len=256) :: checkpoint_dir = ''  ! '' = no checkpoints (insitra's checkpoint.dir)
  integer :: checkpoint_every = 250      ! training steps between checkpoints; 0 = only on a stop
  namelist /parameters/ nx, ny, steps, push_every, output_every, patch, patches_per_push, &
                    eval_patches, test_steps, diffusion_number, cooling, source_strength, &
                    max_test_error, seed, surrogate, metrics, checkpoint_dir, checkpoint_every, &
                    min_gain, mode, field_patch, field_surrogate, spinup

  character(len=*), parameter :: surrogate_yaml = &
    '{model: {d_model: 32, n_layers: 2, n_heads: 4, residual: true}, ' // &
    'training: {batch_size: 64}, ' // &
    'optimizer: {lr: 4.0e-3, min_lr: 1.0e-4, weight_decay: 0.0}, ' // &
    'data: {capacity: 2048, normalize: frozen, normalize_samples: 2048}, ' // &
    'checkpoint: {keep_last: 2, include_samples: true}}'
  ! include_samples: a resumed run trains on the samples it had, not on an
  ! empty store (and so continues exactly as an uninterrupted run would).
  ! residual: the output u(t + dt) is an increment of input feature 1, u(t):
  ! the surrogate learns the change, which is a small part of u. normalize:
  ! inputs and that change are standardised per feature with statistics of
  ! the first 2048 samples pushed (all ranks), then frozen; insitra applies
  ! them inside push, train and predict, so this program sees physical units.
  ! batch_size 64: the increments are learned to a few per cent only with
  ! less gradient noise than 16 patches give (measured: 43x better than 'no
  ! change' against 11x with 16, for 1.3x the run's time).
  character(len=*), parameter :: field_yaml = &
    '{model: {d_model: 32, n_layers: 2, n_heads: 4, residual: true}, ' // &
    'training: {batch_size: 8}, ' // &
    'optimizer: {lr: 4.0e-3, min_lr: 1.0e-4, weight_decay: 0.0}, ' // &
    'data: {capacity: 256, normalize: frozen, normalize_samples: 32}, ' // &
    'checkpoint: {keep_last: 2, include_samples: true}}'
  ! The whole-field surrogate: one sample per push instead of
  ! patches_per_push, each nx ny points instead of P*P, so a batch of 8
  ! samples holds far more points than the patch surrogate's 64 and the
  ! store's 256 samples span the same 512 solver steps as its 2048 patches;
  ! the statistics are frozen after 32 samples (the first 64 solver steps).
  ! model.residual_inputs (set below) names each output point's u feature.

  ! ---- the decomposition ----
  type(MPI_Comm) :: cart
  integer :: rank, nranks, dims(2), coords(2), west, east, south, north
  integer :: lnx, lny, ix0, iy0            ! local interior size, global offset
  real(dp), allocatable :: u(:,:), q(:,:)       ! (0:lnx+1, 0:lny+1) with halo
  real(dp), allocatable, target :: u_next(:,:)  ! the same; checkpoints save its interior

  ! ---- the surrogates: S_PATCH (samples are patches), S_FIELD (a sample is the whole field) ----
  integer, parameter :: S_PATCH = 1, S_FIELD = 2
  character(len=*), parameter :: NAMES(2) = ['per-patch  ', 'whole-field']
  logical :: trained(2)                    ! which of them this run trains
  integer :: main                          ! the one whose checkpoints hold the simulation's state
  type(insitra_config) :: cfg(2)
  type(insitra_trainer) :: trainers(2)
  type(insitra_metrics) :: m(2)
  real(c_float), allocatable :: x(:,:,:), y(:,:,:), pred(:,:,:)
  integer :: ntok
  ! The whole-field sample: every point's features and target on this
  ! rank's block, and its tokens, this rank's slice of the global sample.
  real(c_float), allocatable :: points_in(:,:,:), points_out(:,:,:), points_pred(:,:,:)  ! (F_IN|1, lnx, lny)
  real(c_float), allocatable :: xf(:,:,:), yf(:,:,:), predf(:,:,:)  ! (F_IN fp^2 | fp^2, T/cp, 1)
  integer :: ftok, ftok_global             ! tokens of this rank's slice, of the whole sample

  ! ---- checkpoints ----
  character(len=:), allocatable :: ckpt_dir   ! '' when checkpoints are off
  integer :: ckpt_every                       ! insitra's checkpoint.every_steps
  integer(c_int64_t) :: train_now = 0         ! the trainer's step
  ! What a checkpoint holds besides the surrogate: u_next's interior (the
  ! field after solver step saved_step) and every rank's generator.
  ! train_step may save at any step: these hold then.
  integer(c_int64_t), target :: saved_step = 0
  integer, allocatable, target :: generator(:)
  integer :: first_step
  logical :: stop_now = .false.
  real(dp) :: train_tokens(2) = 0, train_seconds(2) = 0

  integer :: step, unit, ios, ntiles, s
  real(dp) :: t0, err(3, 2), test_err(3, 2), rel(2), still
  character(len=1024) :: line

  call MPI_Init()
  call MPI_Comm_rank(MPI_COMM_WORLD, rank)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks)
  call read_parameters()
  call decompose()
  ntok = patch * patch

  ! The surrogates: built-in configuration, then the user's YAML, then the
  ! shape this program's samples have.
  do s = S_PATCH, S_FIELD
    if (.not. trained(s)) cycle
    call cfg(s)%create()
    if (s == S_PATCH) call cfg(s)%load_yaml_string(surrogate_yaml)
    if (s == S_FIELD) call cfg(s)%load_yaml_string(field_yaml)
    ! The learning rate warms up over the first tenth of the run's training
    ! steps and decays (cosine) to min_lr by its end.
    call cfg(s)%set('optimizer.decay_steps', max(1, (steps - spinup) / push_every))
    call cfg(s)%set('optimizer.warmup_steps', (steps - spinup) / push_every / 10)
    if (len_trim(checkpoint_dir) > 0 .and. s == main) then
      call cfg(s)%set('checkpoint.dir', trim(checkpoint_dir))
      call cfg(s)%set('checkpoint.every_steps', checkpoint_every)
    end if
    if (s == S_PATCH .and. len_trim(surrogate) > 0) call cfg(s)%load_yaml(surrogate)
    if (s == S_FIELD .and. len_trim(field_surrogate) > 0) call cfg(s)%load_yaml(field_surrogate)
    if (s == S_PATCH) then
      call cfg(s)%set('model.seq_len', ntok)
      call cfg(s)%set('model.in_features', F_IN)
      call cfg(s)%set('model.out_features', F_OUT)
    else
      call cfg(s)%set('model.seq_len', ftok_global)
      call cfg(s)%set('model.in_features', F_IN * field_patch**2)
      call cfg(s)%set('model.out_features', F_OUT * field_patch**2)
      call cfg(s)%set('model.residual_inputs', field_residual_inputs())
      call cfg(s)%set('parallel.cp', nranks)
    end if
  end do
  ! What the configuration says in the end (the YAML may set these too).
  call cfg(main)%get('checkpoint.dir', ckpt_dir)
  call cfg(main)%get('checkpoint.every_steps', ckpt_every)
  if (mode == 'both') then
    ! Checkpoints would hold the simulation's state with one surrogate
    ! and leave the other's out.
    if (len(ckpt_dir) > 0) then
      if (rank == 0) print '(a)', "heat2d: mode = 'both' trains two surrogates and checkpoints " // &
        "hold one; run mode = 'patch' or 'field' with checkpoints"
      error stop 1
    end if
    call cfg(S_FIELD)%set('checkpoint.dir', '')
  end if
  do s = S_PATCH, S_FIELD
    if (trained(s)) call trainers(s)%create(cfg(s), cart)
  end do

  allocate(u(0:lnx + 1, 0:lny + 1), u_next(0:lnx + 1, 0:lny + 1), q(0:lnx + 1, 0:lny + 1))
  allocate(x(F_IN, ntok, max(patches_per_push, eval_patches)))
  allocate(y(F_OUT, ntok, size(x, 3)), pred(F_OUT, ntok, size(x, 3)))
  if (trained(S_FIELD)) then
    allocate(points_in(F_IN, lnx, lny), points_out(F_OUT, lnx, lny), points_pred(F_OUT, lnx, lny))
    allocate(xf(F_IN * field_patch**2, ftok, 1), yf(F_OUT * field_patch**2, ftok, 1))
    allocate(predf(F_OUT * field_patch**2, ftok, 1))
    call check_field_tokens()
  end if
  call initial_field()
  call seed_sampler(0)
  if (len(ckpt_dir) > 0) call add_state_to_checkpoints()

  if (rank == 0) then
    print '(3a, 2(i0, a), 3(i0, a))', 'heat2d with insitra ', insitra_version(), ': ', &
      nx, ' x ', ny, ' grid on ', nranks, ' ranks (', dims(1), ' x ', dims(2), ')'
    if (trained(S_PATCH)) print '(a, 2(i0, a), i0, a)', 'per-patch surrogate: a sample is one ', &
      patch, ' x ', patch, ' patch of a subdomain, ', ntok, ' tokens (one per point)'
    if (trained(S_FIELD)) print '(a, 3(i0, a), 2(i0, a))', 'whole-field surrogate: a sample is the ' // &
      'whole field, ', ftok_global, ' tokens of ', field_patch, ' x ', field_patch, &
      ' points, ', ftok, ' on each rank (parallel.cp = ', nranks, ')'
  end if
  first_step = 1
  if (len(ckpt_dir) > 0) call resume(first_step)
  if (rank == 0) then
    if (first_step > 1) then   ! the metrics of the earlier part stay
      open(newunit=unit, file=trim(metrics), status='unknown', position='append', &
           action='write', iostat=ios)
    else
      open(newunit=unit, file=trim(metrics), status='replace', action='write', iostat=ios)
    end if
    if (ios /= 0) error stop 'heat2d: cannot open the metrics file'
    if (first_step > 1) then
      write(line, '(a, i0, a, i0, 3a)') '{"event": "resumed", "step": ', first_step - 1, &
        ', "train_steps": ', train_now, ', "checkpoint": "', ckpt_path(train_now), '"}'
      write(unit, '(a)') trim(line)
    end if
    if (len(ckpt_dir) > 0) &
      print '(3a, i0, a)', 'checkpoints: ', ckpt_dir, ', every ', ckpt_every, &
        ' training steps and on SIGUSR1/SIGTERM'
  end if

  ! ---- the time loop ----
  t0 = MPI_Wtime()
  do step = first_step, steps
    call advance(step)                         ! u_next = one solver step from u
    if (step <= spinup) then                   ! the initial field's transient: not trained on
      u(1:lnx, 1:lny) = u_next(1:lnx, 1:lny)
      cycle
    end if
    if (trained(S_FIELD) .and. (mod(step, output_every) == 0 .or. mod(step, push_every) == 0)) &
      call field_sample()

    if (mod(step, output_every) == 0) then
      ! Held out: this step, scored before it is pushed (patches at random
      ! places; the whole field).
      err = 0
      if (trained(S_PATCH)) then
        call cut_patches(eval_patches, random=.true.)
        err(:, S_PATCH) = squared_sums(eval_patches)
      end if
      if (trained(S_FIELD)) err(:, S_FIELD) = field_squared_sums()
    end if

    if (mod(step, push_every) == 0) then
      if (trained(S_PATCH)) then
        call cut_patches(patches_per_push, random=.true.)
        call trainers(S_PATCH)%push_samples(x(:, :, 1:patches_per_push), y(:, :, 1:patches_per_push))
      end if
      if (trained(S_FIELD)) call trainers(S_FIELD)%push_samples(xf, yf)  ! this rank's slice of one sample
      ! train_step writes step-N.h5 if N is a multiple of checkpoint.every_steps
      ! or a stop was requested: with the field after this solver step (u_next)
      ! and the generators as they are now.
      saved_step = step
      if (len(ckpt_dir) > 0) call random_seed(get=generator)
      do s = S_PATCH, S_FIELD
        if (.not. trained(s)) cycle
        call trainers(s)%train_step(m(s))
        train_tokens(s) = train_tokens(s) + real(m(s)%tokens, dp)
        train_seconds(s) = train_seconds(s) + m(s)%step_seconds
      end do
      train_now = m(main)%step
      call trainers(main)%should_stop(stop_now)
    end if

    if (mod(step, output_every) == 0) call report(step, err)
    if (stop_now) exit

    u(1:lnx, 1:lny) = u_next(1:lnx, 1:lny)
  end do

  if (stop_now) then
    call report_stop()
  else
    call finish_run()
  end if

  deallocate(u, u_next, q, x, y, pred)
  do s = S_PATCH, S_FIELD
    if (.not. trained(s)) cycle
    call trainers(s)%free()
    call cfg(s)%free()
  end do
  call MPI_Comm_free(cart)
  call MPI_Finalize()
  ! A stopped run ends here with status 0: the batch script requeues it.
  if (.not. stop_now) then
    do s = S_PATCH, S_FIELD
      if (.not. trained(s)) cycle
      if (.not. ieee_is_finite(rel(s))) error stop 'heat2d: a held-out error is not finite'
      if (max_test_error > 0 .and. rel(s) > max_test_error) &
        error stop 'heat2d: a held-out error is above max_test_error'
      if (min_gain > 0 .and. still < min_gain * rel(s)) &
        error stop "heat2d: a surrogate beats 'no change' by less than min_gain"
    end do
  end if

contains

  subroutine read_parameters()
    character(len=256) :: path
    if (command_argument_count() >= 1) then
      call get_command_argument(1, path)
      open(newunit=unit, file=trim(path), status='old', action='read', iostat=ios)
      if (ios == 0) read(unit, nml=parameters, iostat=ios)
      if (ios /= 0) then
        if (rank == 0) write(*, '(a)') 'heat2d: cannot read namelist &parameters from ' // trim(path)
        error stop 1
      end if
      close(unit)
    end if
    trained = [mode == 'patch' .or. mode == 'both', mode == 'field' .or. mode == 'both']
    if (.not. any(trained) .or. field_patch < 1 .or. spinup < 0 .or. spinup + push_every > steps) then
      if (rank == 0) write(*, '(3a, 3(i0, a))') "heat2d: mode must be 'patch', 'field' or 'both', " // &
        "field_patch at least 1 and spinup from 0 to steps - push_every, not mode = '", trim(mode), &
        "', field_patch = ", field_patch, ', spinup = ', spinup, ' (steps = ', steps, ')'
      error stop 1
    end if
    main = S_PATCH
    if (.not. trained(S_PATCH)) main = S_FIELD
  end subroutine read_parameters

  ! A periodic Cartesian grid of ranks; each owns a block of the global grid.
  subroutine decompose()
    dims = 0
    call MPI_Dims_create(nranks, 2, dims)
    call MPI_Cart_create(MPI_COMM_WORLD, 2, dims, [.true., .true.], .true., cart)
    call MPI_Comm_rank(cart, rank)
    call MPI_Cart_coords(cart, rank, 2, coords)
    call MPI_Cart_shift(cart, 0, 1, west, east)
    call MPI_Cart_shift(cart, 1, 1, south, north)
    call split(nx, dims(1), coords(1), lnx, ix0)
    call split(ny, dims(2), coords(2), lny, iy0)
    if (trained(S_PATCH) .and. (lnx < patch .or. lny < patch)) then
      if (rank == 0) print '(a)', 'heat2d: a subdomain is smaller than one patch; ' // &
                                  'use a larger grid, a smaller patch or fewer ranks'
      error stop 1
    end if
    ! The whole-field sample: every rank's block must be the same whole
    ! number of tokens, T / cp (the same on every rank, so no rank stops alone).
    if (trained(S_FIELD) .and. (mod(nx, dims(1) * field_patch) /= 0 .or. &
                              mod(ny, dims(2) * field_patch) /= 0)) then
      if (rank == 0) print '(a, 5(i0, a))', 'heat2d: whole-field mode needs nx and ny divisible by ' // &
        'the ranks along them times field_patch; ', nx, ' x ', ny, ' on ', dims(1), ' x ', dims(2), &
        ' ranks with field_patch ', field_patch, ' is not'
      error stop 1
    end if
    if (mode == 'both' .and. (mod(lnx, patch) /= 0 .or. mod(lny, patch) /= 0)) then
      if (rank == 0) print '(a, 3(i0, a))', "heat2d: mode = 'both' compares the surrogates on the same " // &
        'points, so the tiles of patch x patch must cover each subdomain; ', lnx, ' x ', lny, &
        ' points with patch ', patch, ' are not covered'
      error stop 1
    end if
    ftok = (lnx / field_patch) * (lny / field_patch)
    ftok_global = (nx / field_patch) * (ny / field_patch)
  end subroutine decompose

  ! n points over parts: this part's count and first (0-based) index.
  subroutine split(n, parts, me, count, first)
    integer, intent(in) :: n, parts, me
    integer, intent(out) :: count, first
    count = n / parts
    first = me * count + min(me, mod(n, parts))
    if (me < mod(n, parts)) count = count + 1
  end subroutine split

  ! Smooth random modes (the same field for any decomposition).
  subroutine initial_field()
    integer :: i, j, k
    real(dp) :: gx, gy, a(4), ph(4)
    a = [0.5_dp, -0.3_dp, 0.2_dp, 0.25_dp]
    ph = [0.3_dp, 1.1_dp, 2.0_dp, 4.2_dp]
    u = 0
    do j = 1, lny
      gy = (iy0 + j - 0.5_dp) / ny
      do i = 1, lnx
        gx = (ix0 + i - 0.5_dp) / nx
        do k = 1, 4
          u(i, j) = u(i, j) + a(k) * sin(2 * PI * (k * gx + (5 - k) * gy) + ph(k))
        end do
      end do
    end do
  end subroutine initial_field

  ! The heat source increment q dt at time step `step`: a heating and a
  ! cooling Gaussian spot on Lissajous paths (periodic distances).
  subroutine source(step)
    integer, intent(in) :: step
    real(dp), parameter :: width = 0.015_dp
    real(dp) :: s, cx(2), cy(2), dx, dy, gx, gy
    integer :: i, j, k
    s = real(step, dp) / 1500
    cx = [0.5_dp + 0.3_dp * cos(2 * PI * s), 0.5_dp + 0.35_dp * sin(2 * PI * 0.7_dp * s)]
    cy = [0.5_dp + 0.3_dp * sin(2 * PI * s), 0.5_dp + 0.35_dp * cos(2 * PI * 1.3_dp * s)]
    q = 0
    do j = 1, lny
      gy = (iy0 + j - 0.5_dp) / ny
      do i = 1, lnx
        gx = (ix0 + i - 0.5_dp) / nx
        do k = 1, 2
          dx = gx - cx(k) - anint(gx - cx(k))
          dy = gy - cy(k) - anint(gy - cy(k))
          q(i, j) = q(i, j) + (3 - 2 * k) * source_strength * &
                    exp(-(dx * dx + dy * dy) / (2 * width * width))
        end do
      end do
    end do
  end subroutine source

  ! One explicit step: halo exchange, then the 5-point update of the interior.
  subroutine advance(step)
    integer, intent(in) :: step
    integer :: i, j
    call exchange_halo(u)
    call source(step)
    do j = 1, lny
      do i = 1, lnx
        u_next(i, j) = u(i, j) + diffusion_number * &
                       (u(i + 1, j) + u(i - 1, j) + u(i, j + 1) + u(i, j - 1) - 4 * u(i, j)) &
                       - cooling * u(i, j) + q(i, j)
      end do
    end do
  end subroutine advance

  ! Faces are packed into contiguous buffers; a direction with one rank
  ! sends to itself (the domain is periodic).
  subroutine exchange_halo(f)
    real(dp), intent(inout) :: f(0:, 0:)
    real(dp) :: sx(lny), rx_(lny), sy(lnx), ry_(lnx)
    sx = f(lnx, 1:lny)
    call MPI_Sendrecv(sx, lny, MPI_DOUBLE_PRECISION, east, 1, rx_, lny, MPI_DOUBLE_PRECISION, &
                      west, 1, cart, MPI_STATUS_IGNORE)
    f(0, 1:lny) = rx_
    sx = f(1, 1:lny)
    call MPI_Sendrecv(sx, lny, MPI_DOUBLE_PRECISION, west, 2, rx_, lny, MPI_DOUBLE_PRECISION, &
                      east, 2, cart, MPI_STATUS_IGNORE)
    f(lnx + 1, 1:lny) = rx_
    sy = f(1:lnx, lny)
    call MPI_Sendrecv(sy, lnx, MPI_DOUBLE_PRECISION, north, 3, ry_, lnx, MPI_DOUBLE_PRECISION, &
                      south, 3, cart, MPI_STATUS_IGNORE)
    f(1:lnx, 0) = ry_
    sy = f(1:lnx, 1)
    call MPI_Sendrecv(sy, lnx, MPI_DOUBLE_PRECISION, south, 4, ry_, lnx, MPI_DOUBLE_PRECISION, &
                      north, 4, cart, MPI_STATUS_IGNORE)
    f(1:lnx, lny + 1) = ry_
  end subroutine exchange_halo

  ! Each rank's patch generator, from the seed, the rank and (when a run
  ! resumes on another rank count) the solver step.
  subroutine seed_sampler(shift)
    integer, intent(in) :: shift
    integer :: n, i
    integer, allocatable :: s(:)
    call random_seed(size=n)
    allocate(s(n))
    s = [(seed + 7919 * rank + 104729 * i + 31 * shift, i = 1, n)]
    call random_seed(put=s)
  end subroutine seed_sampler

  ! Samples 1..n of x(F_IN, T, :) and y(F_OUT, T, :) from u (with its halo),
  ! q and u_next: patches at random places, or the tiles of the subdomain.
  subroutine cut_patches(n, random)
    integer, intent(in) :: n
    logical, intent(in) :: random
    integer :: s, i0, j0, i, j, k, tok
    real :: r(2)
    do s = 1, n
      if (random) then
        call random_number(r)
        i0 = min(int(r(1) * (lnx - patch + 1)), lnx - patch)
        j0 = min(int(r(2) * (lny - patch + 1)), lny - patch)
      else
        k = s - 1
        i0 = mod(k, lnx / patch) * patch
        j0 = (k / (lnx / patch)) * patch
      end if
      do j = 1, patch
        do i = 1, patch
          tok = (j - 1) * patch + i
          x(:, tok, s) = point_features(i0 + i, j0 + j)
          y(1, tok, s) = real(u_next(i0 + i, j0 + j), c_float)
        end do
      end do
    end do
  end subroutine cut_patches

  ! The F_IN features of point (i, j): u(t), the neighbours as differences
  ! to it (their scale is the change's, which per-feature normalisation then
  ! makes visible), and the source increment.
  function point_features(i, j) result(f)
    integer, intent(in) :: i, j
    real(c_float) :: f(F_IN)
    f = real([u(i, j), u(i + 1, j) - u(i, j), u(i - 1, j) - u(i, j), &
              u(i, j + 1) - u(i, j), u(i, j - 1) - u(i, j), q(i, j)], c_float)
  end function point_features

  ! This rank's slice of the whole-field sample of this step: xf(F_IN fp^2,
  ! T/cp, 1) and yf(fp^2, T/cp, 1), tokens of the block's points (u, q and
  ! u_next, halo exchanged by advance).
  subroutine field_sample()
    integer :: i, j
    do j = 1, lny
      do i = 1, lnx
        points_in(:, i, j) = point_features(i, j)
        points_out(1, i, j) = real(u_next(i, j), c_float)
      end do
    end do
    call insitra_field_to_patches(points_in, field_patch, xf(:, :, 1))
    call insitra_field_to_patches(points_out, field_patch, yf(:, :, 1))
  end subroutine field_sample

  ! Collective: the whole-field surrogate's prediction of this step (each
  ! rank's own tokens, turned back into its block), and the sums of
  ! squared_sums over every point of the field.
  function field_squared_sums() result(e)
    real(dp) :: e(3)
    call trainers(S_FIELD)%predict(xf, predf)
    call insitra_patches_to_field(predf(:, :, 1), field_patch, points_pred)
    e(1) = sum(real(points_pred - points_out, dp)**2)
    e(2) = sum(real(points_out, dp)**2)
    e(3) = sum(real(points_in(1, :, :) - points_out(1, :, :), dp)**2)
    call MPI_Allreduce(MPI_IN_PLACE, e, 3, MPI_DOUBLE_PRECISION, MPI_SUM, cart)
  end function field_squared_sums

  ! model.residual_inputs of the whole-field surrogate: output o of a token
  ! is point o of its patch, whose u is input feature F_IN * o (a token's
  ! features are its points' F_IN features one point after another).
  function field_residual_inputs() result(list)
    character(len=:), allocatable :: list
    character(len=16) :: item
    integer :: o
    list = ''
    do o = 0, field_patch**2 - 1
      write(item, '(i0)') F_IN * o
      if (o > 0) list = list // ','
      list = list // trim(item)
    end do
  end function field_residual_inputs

  ! Collective: the trainer expects T/cp tokens on this rank, the tokens of
  ! its block, and the blocks of all ranks add up to the whole sample, T.
  subroutine check_field_tokens()
    integer(c_int64_t) :: seq_len, fin, fout
    integer :: sum_tok
    logical :: ok
    call trainers(S_FIELD)%sample_shape(seq_len, fin, fout)
    call MPI_Allreduce(ftok, sum_tok, 1, MPI_INTEGER, MPI_SUM, cart)
    ok = seq_len == ftok .and. seq_len * nranks == ftok_global .and. sum_tok == ftok_global
    call MPI_Allreduce(MPI_IN_PLACE, ok, 1, MPI_LOGICAL, MPI_LAND, cart)
    if (.not. ok) then
      if (rank == 0) print '(a, 4(i0, a))', 'heat2d: the whole-field tokens do not add up: the trainer ' // &
        'expects ', seq_len, ' per rank, this block has ', ftok, ', the ranks ', sum_tok, &
        ' together, the sample ', ftok_global
      error stop 1
    end if
  end subroutine check_field_tokens

  ! Collective: over samples 1..n of every rank, the sums of the surrogate's
  ! squared error, of the squared target u(t + dt), and of the squared
  ! change u(t + dt) - u(t) (the error of predicting no change).
  function squared_sums(n) result(e)
    integer, intent(in) :: n
    real(dp) :: e(3)
    call trainers(S_PATCH)%predict(x(:, :, 1:n), pred(:, :, 1:n))
    e(1) = sum(real(pred(1, :, 1:n) - y(1, :, 1:n), dp)**2)
    e(2) = sum(real(y(1, :, 1:n), dp)**2)
    e(3) = sum(real(x(1, :, 1:n) - y(1, :, 1:n), dp)**2)
    call MPI_Allreduce(MPI_IN_PLACE, e, 3, MPI_DOUBLE_PRECISION, MPI_SUM, cart)
  end function squared_sums

  ! Rank 0: the progress line and record; e(:, s) are the squared sums of
  ! surrogate s (its error, the target, the change). The main surrogate's
  ! figures keep the plain keys (loss, rel_l2); with mode = 'both' the
  ! whole-field one's follow as field_loss and field_rel_l2.
  subroutine report(step, e)
    integer, intent(in) :: step
    real(dp), intent(in) :: e(3, 2)
    real(dp) :: r(2), still_now
    integer :: k
    character(len=256) :: more
    if (rank /= 0) return
    r = 0
    do k = S_PATCH, S_FIELD
      if (trained(k)) r(k) = sqrt(e(1, k) / e(2, k))
    end do
    still_now = sqrt(e(3, main) / e(2, main))
    more = ''
    if (mode == 'both') write(more, '(a, es9.2, a, es9.2)') '  whole-field loss ', m(S_FIELD)%loss, &
      ' rel L2 ', r(S_FIELD)
    print '(a, i6, a, i5, a, es9.2, a, es9.2, a, es9.2, 2a, es9.2, a, f6.1, a)', 'step ', step, &
      '  train steps ', m(main)%step, '  loss ', m(main)%loss, '  lr ', m(main)%lr, &
      '  surrogate rel L2 ', r(main), trim(more), '  (no change ', still_now, ')  ', &
      MPI_Wtime() - t0, ' s'
    ! es...e3: a three-digit exponent keeps every value valid JSON.
    write(line, '(a, i0, a, i0, 5(a, es13.5e3))') '{"event": "interval", "step": ', &
      step, ', "train_steps": ', m(main)%step, ', "loss": ', m(main)%loss, ', "lr": ', m(main)%lr, &
      ', "rel_l2": ', r(main), ', "no_change_rel_l2": ', still_now, ', "wall_s": ', MPI_Wtime() - t0
    if (mode == 'both') write(line, '(a, 2(a, es13.5e3))') trim(line), ', "field_loss": ', &
      m(S_FIELD)%loss, ', "field_rel_l2": ', r(S_FIELD)
    write(unit, '(2a)') trim(line), '}'
    flush(unit)
  end subroutine report

  ! Rank 0, after a stop request: says where the run stopped and what holds it.
  subroutine report_stop()
    if (rank /= 0) return
    print '(/, a, i0, a, i0, 5a)', 'heat2d: stop requested (SIGUSR1, SIGTERM or the deadline) '// &
      'at solver step ', step, ', training step ', train_now, '; saved the surrogate and the field in ', &
      ckpt_path(train_now), '. Run again to continue.'
    write(line, '(a, i0, a, i0, a, es24.16e3, 3(a, es13.5e3), 3a)') &
      '{"event": "stopped", "step": ', step, ', "train_steps": ', train_now, ', "loss": ', &
      m(main)%loss, ', "wall_s": ', MPI_Wtime() - t0, ', "train_tokens": ', train_tokens(main), &
      ', "train_seconds": ', train_seconds(main), ', "checkpoint": "', ckpt_path(train_now), '"}'
    write(unit, '(a)') trim(line)
    close(unit)
  end subroutine report_stop

  ! The end of a run that was not stopped: the last checkpoint, then the
  ! file heat2d-finished beside it (so that running the same command again
  ! does not append to the run, and batch scripts stop requeueing), the
  ! held-out test (further steps, never pushed, the whole domain) and the
  ! summary.
  subroutine finish_run()
    integer :: u_
    if (len(ckpt_dir) > 0) then
      saved_step = steps                 ! u_next holds the field after the last step
      call random_seed(get=generator)
      call trainers(main)%checkpoint_save('')
      if (rank == 0) then
        open(newunit=u_, file=ckpt_dir // '/heat2d-finished', status='replace', action='write')
        write(u_, '(a, i0)') 'finished after training step ', train_now
        close(u_)
      end if
    end if

    ! Every surrogate predicts the same further steps from the solver's
    ! field: the per-patch one tile by tile, the whole-field one the field
    ! at once (with mode = 'both' the tiles cover the field: decompose).
    ntiles = (lnx / patch) * (lny / patch)
    if (trained(S_PATCH)) then
      deallocate(x, y, pred)
      allocate(x(F_IN, ntok, ntiles), y(F_OUT, ntok, ntiles), pred(F_OUT, ntok, ntiles))
    end if
    test_err = 0
    do step = steps + 1, steps + test_steps
      call advance(step)
      if (trained(S_PATCH)) then
        call cut_patches(ntiles, random=.false.)
        test_err(:, S_PATCH) = test_err(:, S_PATCH) + squared_sums(ntiles)
      end if
      if (trained(S_FIELD)) then
        call field_sample()
        test_err(:, S_FIELD) = test_err(:, S_FIELD) + field_squared_sums()
      end if
      u(1:lnx, 1:lny) = u_next(1:lnx, 1:lny)
    end do
    rel = 0
    do s = S_PATCH, S_FIELD
      if (trained(s)) rel(s) = sqrt(test_err(1, s) / test_err(2, s))
    end do
    still = sqrt(test_err(3, main) / test_err(2, main))
    if (rank == 0) call print_summary()
  end subroutine finish_run

  ! Rank 0: the table of the held-out test and the held_out record.
  subroutine print_summary()
    integer :: k
    print '(/, a, i0, a)', 'held-out test: the ', test_steps, ' solver steps after training, ' // &
      'each predicted from the solver''s field before it, every point of the domain'
    print '(a)', 'surrogate     tokens per sample               rel. L2 error  ' // &
      "'no change' / it  training steps  final loss  tokens/s (train_step)"
    do k = S_PATCH, S_FIELD
      if (.not. trained(k)) cycle
      if (k == S_PATCH) write(line, '(i0, a, i0, a, i0, a)') ntok, ' (', patch, ' x ', patch, ' points)'
      if (k == S_FIELD) write(line, '(i0, a, i0, a)') ftok_global, ' (', ftok, ' per rank)'
      print '(a, 2x, a30, es10.3, f15.1, a, i13, es15.3, es13.3)', NAMES(k), line(1:30), rel(k), &
        still / max(rel(k), tiny(rel)), 'x', m(k)%step, m(k)%loss, &
        train_tokens(k) / max(train_seconds(k), tiny(rel))
    end do
    print '(a, 2x, a30, es10.3, f15.1, a)', 'no change  ', '', still, 1.0_dp, 'x'
    print '(a)', "relative L2 = ||prediction - solver|| / ||solver|| over every point of the " // &
      "held-out steps; 'no change' predicts u(t + dt) = u(t), the bar to beat; tokens/s: " // &
      'tokens of all ranks per second of insitra_train_step'
    print '(a, f7.1, a)', 'wall time', MPI_Wtime() - t0, ' s'
    if (len(ckpt_dir) > 0) print '(2a)', 'checkpoint: ', ckpt_path(train_now)
    print '(a, a)', 'metrics: ', trim(metrics)
    ! loss: 17 significant digits, so runs can be compared bit for bit. The
    ! main surrogate's figures keep the plain keys.
    write(line, '(3a, i0, 2(a, es13.5e3), 2(a, i0), a, es24.16e3, 3(a, es13.5e3))') &
      '{"event": "held_out", "mode": "', trim(mode), '", "test_steps": ', test_steps, &
      ', "rel_l2": ', rel(main), ', "no_change_rel_l2": ', still, ', "step": ', steps, &
      ', "train_steps": ', train_now, ', "loss": ', m(main)%loss, ', "wall_s": ', MPI_Wtime() - t0, &
      ', "train_tokens": ', train_tokens(main), ', "train_seconds": ', train_seconds(main)
    if (trained(S_FIELD)) write(line, '(a, 4(a, i0))') trim(line), ', "field_seq_len": ', ftok_global, &
      ', "field_tokens_per_rank": ', ftok, ', "cp": ', nranks, ', "field_in_features": ', &
      F_IN * field_patch**2
    if (mode == 'both') write(line, '(a, a, es13.5e3, a, es24.16e3)') trim(line), &
      ', "field_rel_l2": ', rel(S_FIELD), ', "field_loss": ', m(S_FIELD)%loss
    if (len(ckpt_dir) > 0) then
      write(unit, '(4a)') trim(line), ', "checkpoint": "', ckpt_path(train_now), '"}'
    else
      write(unit, '(2a)') trim(line), '}'
    end if
    close(unit)
  end subroutine print_summary

  ! ---- checkpoints: the simulation's half ---------------------------------

  ! dir/step-NNNNNNNN.h5, insitra's name for training step n.
  function ckpt_path(n) result(path)
    integer(c_int64_t), intent(in) :: n
    character(len=:), allocatable :: path
    path = ckpt_dir // '/step-' // padded(n) // '.h5'
  end function ckpt_path

  function padded(n) result(text)
    integer(c_int64_t), intent(in) :: n
    character(len=:), allocatable :: text
    character(len=24) :: buf
    write(buf, '(i8.8)') n
    if (n > 99999999_c_int64_t) write(buf, '(i0)') n
    text = trim(buf)
  end function padded

  ! The training step of a checkpoint file name (.../step-NNNNNNNN.h5).
  function step_of(path) result(n)
    character(len=*), intent(in) :: path
    integer(c_int64_t) :: n
    integer :: at, dot, ios_
    at = index(path, 'step-', back=.true.)
    dot = index(path, '.h5', back=.true.)
    n = -1
    if (at > 0 .and. dot > at + 5) read(path(at + 5:dot - 1), *, iostat=ios_) n
  end function step_of

  ! The simulation's state in every checkpoint of the trainer: u_next's
  ! interior as this rank's block of the global nx x ny field, this rank's
  ! generator as its block of all ranks', and the solver step (rank 0's).
  subroutine add_state_to_checkpoints()
    integer :: n
    call random_seed(size=n)
    allocate(generator(n))
    call trainers(main)%checkpoint_add_array('u', u_next, global_shape=[int(nx, c_int64_t), int(ny, c_int64_t)], &
                                      offset=[int(ix0, c_int64_t), int(iy0, c_int64_t)], &
                                      count=[int(lnx, c_int64_t), int(lny, c_int64_t)], &
                                      mem_offset=[1_c_int64_t, 1_c_int64_t])
    call add_generators()
    call trainers(main)%checkpoint_add_scalar('solver_step', saved_step)
  end subroutine add_state_to_checkpoints

  subroutine add_generators()
    integer(c_int64_t) :: n
    n = size(generator, kind=c_int64_t)
    call trainers(main)%checkpoint_add_array('generators', generator, global_shape=[n * nranks], &
                                      offset=[n * rank], count=[n])
  end subroutine add_generators

  ! Collective. If checkpoint.dir holds a run of this program, loads its
  ! newest checkpoint that verifies (the surrogate and the field together)
  ! and sets first to the solver step after it; a new run leaves first at 1.
  subroutine resume(first)
    integer, intent(inout) :: first
    character(len=:), allocatable :: loaded
    logical :: exists
    integer :: status
    inquire(file=ckpt_dir // '/heat2d-finished', exist=exists)
    if (exists) then
      if (rank == 0) write(*, '(3a)') 'heat2d: ', ckpt_dir, ' holds a finished run; remove it ' // &
        '(or set another checkpoint_dir) to start a new one'
      error stop 1
    end if
    inquire(file=ckpt_dir // '/latest', exist=exists)
    if (.not. exists) return             ! a new run
    call trainers(main)%checkpoint_load(ckpt_dir, loaded, status)
    if (status /= INSITRA_STATUS_OK .and. index(insitra_last_error(), "'/user/generators' has shape") > 0) then
      ! Written on another rank count: the patches differ from here on
      ! anyway, so the generators start afresh from the solver step.
      call trainers(main)%checkpoint_clear_arrays()
      call trainers(main)%checkpoint_add_array('u', u_next, global_shape=[int(nx, c_int64_t), int(ny, c_int64_t)], &
                                        offset=[int(ix0, c_int64_t), int(iy0, c_int64_t)], &
                                        count=[int(lnx, c_int64_t), int(lny, c_int64_t)], &
                                        mem_offset=[1_c_int64_t, 1_c_int64_t])
      call trainers(main)%checkpoint_add_scalar('solver_step', saved_step)
      call trainers(main)%checkpoint_load(ckpt_dir, loaded, status)
      call add_generators()              ! this rank count's, from now on
      if (status == INSITRA_STATUS_OK) call seed_sampler(int(saved_step))
    else if (status == INSITRA_STATUS_OK) then
      call random_seed(put=generator)
    end if
    if (status /= INSITRA_STATUS_OK) then
      if (rank == 0) write(*, '(4a)') 'heat2d: cannot resume from ', ckpt_dir, ': ', insitra_last_error()
      error stop 1
    end if
    u(1:lnx, 1:lny) = u_next(1:lnx, 1:lny)
    first = int(saved_step) + 1
    train_now = step_of(loaded)
    if (rank == 0) print '(a, i0, 2a)', 'resuming after solver step ', saved_step, ' from ', loaded
  end subroutine resume

end program heat2d

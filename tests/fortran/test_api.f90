! The Fortran module end to end, on any number of ranks: configuration
! (typed set/get, YAML, validation, plan), trainers on both communicator kinds,
! push / train / predict / evaluate, the array layout rule x(F, T, n) = C
! x[n][T][F], and the error paths with stat present: bad key, malformed YAML,
! wrong array shapes (one rank only, in a collective call: no rank may hang),
! NaN in samples (the store keeps its contents), an empty store; a checkpoint
! save / load round trip; patch tokens of 2-D and 3-D grid blocks (layout,
! round trip, a wrong tokens shape); the surrogate from an export and from the
! trainer predicting what the trainer does, its shape check, checkpoint arrays.
program test_api
  use, intrinsic :: iso_c_binding, only: c_float, c_double, c_int64_t, c_size_t, c_sizeof, c_loc
  use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
  use mpi_f08
  use insitra
  implicit none

  integer, parameter :: T = 4, FI = 3, FO = 2, CAP = 16, BATCH = 4
  integer :: rank, nranks, failures, total_failures
  type(insitra_config) :: cfg

  interface ! c_struct_sizes.c
    function sizeof_metrics() bind(c, name='insitra_test_sizeof_metrics') result(n)
      import :: c_size_t
      integer(c_size_t) :: n
    end function sizeof_metrics
    function sizeof_memory_usage() bind(c, name='insitra_test_sizeof_memory_usage') result(n)
      import :: c_size_t
      integer(c_size_t) :: n
    end function sizeof_memory_usage
    function sizeof_plan() bind(c, name='insitra_test_sizeof_plan') result(n)
      import :: c_size_t
      integer(c_size_t) :: n
    end function sizeof_plan
    function sizeof_plan_grid() bind(c, name='insitra_test_sizeof_plan_grid') result(n)
      import :: c_size_t
      integer(c_size_t) :: n
    end function sizeof_plan_grid
  end interface

  call MPI_Init()
  call MPI_Comm_rank(MPI_COMM_WORLD, rank)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks)
  failures = 0

  call test_struct_layout()
  call test_config()
  call test_train_predict_evaluate()
  call test_layout()
  call test_errors()
  call test_sub_communicator()
  call test_checkpoint()
  call test_patches()
  call test_surrogate()
  call cfg%free()

  call MPI_Allreduce(failures, total_failures, 1, MPI_INTEGER, MPI_SUM, MPI_COMM_WORLD)
  if (rank == 0) then
    if (total_failures == 0) then
      print '(a, i0, a)', 'fortran api: all checks passed on ', nranks, ' rank(s)'
    else
      print '(a, i0, a)', 'fortran api: ', total_failures, ' check(s) failed'
    end if
  end if
  call MPI_Finalize()
  if (total_failures /= 0) error stop 1

contains

  subroutine check(ok, what)
    logical, intent(in) :: ok
    character(len=*), intent(in) :: what
    if (.not. ok) then
      failures = failures + 1
      print '(a, i0, a)', 'FAIL (rank ', rank, '): ' // what
    end if
  end subroutine check

  ! stat must be want, and the message must hold fragment.
  subroutine expect_error(stat, want, fragment, what)
    integer, intent(in) :: stat, want
    character(len=*), intent(in) :: fragment, what
    call check(stat == want, what // ': status ' // insitra_status_name(stat) // ', expected ' // &
               insitra_status_name(want) // ' (' // insitra_last_error() // ')')
    call check(index(insitra_last_error(), fragment) > 0, what // ": message '" // &
               insitra_last_error() // "' lacks '" // fragment // "'")
    if (rank == 0) print '(a)', '  error as expected (' // what // '): ' // insitra_last_error()
  end subroutine expect_error

  ! A collective call failing the same way on every rank: rank 0 reports its
  ! own error, the others name rank 0.
  subroutine expect_agreed_error(stat, want, fragment, what)
    integer, intent(in) :: stat, want
    character(len=*), intent(in) :: fragment, what
    if (rank == 0) then
      call expect_error(stat, want, fragment, what)
    else
      call expect_error(stat, INSITRA_STATUS_REMOTE_ERROR, fragment, what)
      call check(index(insitra_last_error(), 'rank 0 failed (' // insitra_status_name(want)) > 0, &
                 what // ': the message names rank 0 and its status')
    end if
  end subroutine expect_agreed_error

  ! A smooth deterministic field: sample s of this rank, token t, feature f.
  pure real(c_float) function field(f, t, s, shift)
    integer, intent(in) :: f, t, s, shift
    field = real(sin(0.37d0 * f + 0.61d0 * t + 1.3d0 * (s + shift)), c_float)
  end function field

  subroutine make_samples(x, y, shift)
    real(c_float), intent(out) :: x(:,:,:), y(:,:,:)
    integer, intent(in) :: shift
    integer :: f, k, s
    do s = 1, size(x, 3)
      do k = 1, T
        do f = 1, FI
          x(f, k, s) = field(f, k, s, shift)
        end do
        ! A target every token can learn from its own features.
        y(1, k, s) = 0.5_c_float * x(1, k, s) - 0.25_c_float * x(3, k, s)
        y(2, k, s) = 0.3_c_float * x(2, k, s)
      end do
    end do
  end subroutine make_samples

  ! The bind(c) types have the C structs' sizes (a field added in the header
  ! but not in the module shows up here).
  subroutine test_struct_layout()
    type(insitra_metrics) :: m
    type(insitra_memory_usage) :: usage
    type(insitra_plan) :: plan
    type(insitra_plan_grid) :: grid
    integer(c_size_t) :: fortran(4), c(4)
    character(len=80) :: sizes
    fortran = [c_sizeof(m), c_sizeof(usage), c_sizeof(plan), c_sizeof(grid)]
    c = [sizeof_metrics(), sizeof_memory_usage(), sizeof_plan(), sizeof_plan_grid()]
    write(sizes, '(4(i0, 1x), a, 4(1x, i0), a)') fortran, 'in Fortran,', c, ' in C'
    call check(all(fortran == c), 'sizes of insitra_metrics, insitra_memory_usage, ' // &
               'insitra_plan, insitra_plan_grid: ' // trim(sizes))
  end subroutine test_struct_layout

  subroutine test_config()
    integer :: stat
    integer(c_int64_t) :: d_model
    integer :: n_heads
    real(c_double) :: lr
    logical :: causal
    character(len=:), allocatable :: text
    character(len=32) :: version
    type(insitra_plan) :: plan
    integer :: seq_len
    integer(c_int64_t) :: max_seq
    logical :: at_limit, found
    type(insitra_plan_grid) :: grid

    write(version, '(i0, ".", i0, ".", i0)') INSITRA_VERSION_MAJOR, INSITRA_VERSION_MINOR, &
                                             INSITRA_VERSION_PATCH
    call check(insitra_version() == trim(version), 'insitra_version() = ' // insitra_version() // &
               ', the module says ' // trim(version))
    call check(insitra_status_name(INSITRA_STATUS_CONFIG_ERROR) == 'INSITRA_STATUS_CONFIG_ERROR', &
               'insitra_status_name')

    call check(.not. cfg%created(), 'a fresh config is not created')
    call cfg%create()
    call check(cfg%created(), 'config created')
    ! Typed setters, each read back through the typed getters.
    call cfg%set('model.seq_len', T)
    call cfg%set('model.in_features', int(FI, c_int64_t))
    call cfg%set('model.out_features', FO)
    call cfg%set('model.d_model', 8)
    call cfg%set('model.n_layers', 1)
    call cfg%set('model.n_heads', '2')
    call cfg%set('model.causal', .true.)
    call cfg%set('optimizer.lr', 2.5e-3)
    call cfg%set('optimizer.min_lr', 1.0e-4_c_double)
    call cfg%load_yaml_string('{training: {batch_size: 4}, data: {capacity: 16}, ' // &
                              'optimizer: {warmup_steps: 5, decay_steps: 200}}')
    call cfg%get('model.d_model', d_model)
    call check(d_model == 8, 'get int64 model.d_model')
    call cfg%get('model.n_heads', n_heads)
    call check(n_heads == 2, 'get int32 model.n_heads')
    call cfg%get('model.causal', causal)
    call check(causal, 'get logical model.causal')
    call cfg%get('optimizer.lr', lr)
    call check(abs(lr - 2.5d-3) < 1d-15, 'a default real 2.5e-3 is set as the decimal 2.5e-3')
    call cfg%get('optimizer.min_lr', lr)
    call check(transfer(lr, 0_c_int64_t) == transfer(1.0d-4, 0_c_int64_t), &
               'a double round-trips bit for bit')
    call cfg%get('training.batch_size', text)
    call check(text == '4', 'get string training.batch_size from YAML: ' // text)
    call cfg%set('model.causal', .false.)
    call cfg%validate()

    call cfg%plan_stage(4, 1, plan)
    call check(plan%world_size == 4 .and. plan%zero_stage == 1, 'plan_stage echoes its arguments')
    call check(plan%memory%parameter_bytes > 0 .and. plan%memory%total_bytes >= &
               plan%memory%parameter_bytes, 'plan_stage memory')
    ! The largest sequence within the plan's own total at this sequence length.
    call cfg%get('model.seq_len', seq_len)
    call cfg%plan_max_seq_len(4, 1, plan%memory%total_bytes, max_seq, at_limit)
    call check(max_seq >= seq_len .and. .not. at_limit, 'plan_max_seq_len within the plan''s total')
    call cfg%plan_max_seq_len(4, 1, 1_c_int64_t, max_seq)
    call check(max_seq == 0, 'plan_max_seq_len of one byte is 0')
    ! A roomy budget: the suggested grid splits no sample and fits it.
    call cfg%plan_suggest_grid(4, 2 * plan%memory%total_bytes, grid, found)
    call check(found .and. grid%dp == 4 .and. grid%cp == 1 .and. grid%tp == 1 .and. &
               grid%plan%memory%total_bytes <= 2 * plan%memory%total_bytes, 'plan_suggest_grid, a roomy budget')
    call cfg%plan_suggest_grid(4, 1_c_int64_t, grid, found)
    call check(.not. found, 'plan_suggest_grid of one byte finds none')

    ! A typed get of a key of another type names the key.
    call cfg%get('optimizer.lr', n_heads, stat)
    call expect_error(stat, INSITRA_STATUS_CONFIG_ERROR, 'optimizer.lr', 'integer get of a real key')
  end subroutine test_config

  subroutine test_train_predict_evaluate()
    type(insitra_trainer) :: trainer
    type(insitra_metrics) :: m, first
    type(insitra_memory_usage) :: usage
    type(insitra_plan) :: plan
    integer(c_int64_t) :: seq_len, in_features, out_features, count
    real(c_float), allocatable :: x(:,:,:), y(:,:,:), pred(:,:,:)
    real(c_double) :: loss, mse, sums(2)
    integer :: step, n

    call trainer%create(cfg, MPI_COMM_WORLD) ! type(MPI_Comm)
    call check(trainer%created(), 'trainer created')
    call trainer%sample_shape(seq_len, in_features, out_features)
    call check(seq_len == T .and. in_features == FI .and. out_features == FO, 'sample_shape')
    call trainer%num_parameters(count)
    call check(count > 0, 'num_parameters')
    call trainer%memory_report(usage)
    call check(usage%parameter_bytes == 4 * count, 'memory_report: parameter bytes are 4 x count')
    ! The bind(c) types have C's layout: the sums and the nested struct agree.
    call check(usage%total_bytes == usage%parameter_bytes + usage%gradient_bytes + &
               usage%optimizer_bytes + usage%activation_bytes + usage%communication_bytes + &
               usage%sample_store_bytes, 'memory_report: total is the sum of the parts')
    call cfg%plan_stage(nranks, 0, plan)
    call check(plan%memory%parameter_bytes == usage%parameter_bytes .and. &
               plan%memory%optimizer_bytes == usage%optimizer_bytes .and. &
               plan%memory%total_bytes == usage%total_bytes, &
               'plan_stage at stage 0 = memory_report of a stage-0 trainer')
    call check(plan%world_size == nranks .and. plan%zero_stage == 0 .and. &
               plan%collectives_per_step >= 0 .and. plan%comm_bytes_per_step >= 0, &
               'plan_stage: the fields after the nested struct')

    allocate(x(FI, T, CAP), y(FO, T, CAP))
    call make_samples(x, y, 7 * rank)
    call trainer%push_samples(x, y)
    call trainer%samples_stored(count)
    call check(count == CAP, 'samples_stored after a push')

    do step = 1, 60
      call trainer%train_step(m)
      if (step == 1) first = m
    end do
    call check(m%step == 60, 'metrics%step counts the steps')
    call check(m%tokens == int(BATCH * T * nranks, c_int64_t), 'metrics%tokens = batch x T x ranks')
    call check(m%loss < 0.5d0 * first%loss, 'the loss falls (first, last)')
    call trainer%train_step() ! metrics are optional

    ! predict and evaluate with n differing between ranks (0 on rank 1).
    n = 5
    if (rank == 1) n = 0
    deallocate(x, y)
    allocate(x(FI, T, n), y(FO, T, n), pred(FO, T, n))
    call make_samples(x, y, 100 + rank)
    call trainer%predict(x, pred)
    call trainer%evaluate(x, y, loss)
    sums = [sum(real(pred - y, c_double)**2), real(size(y), c_double)]
    call MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE_PRECISION, MPI_SUM, MPI_COMM_WORLD)
    mse = sums(1) / sums(2)
    call check(abs(loss - mse) <= 1d-5 * mse, 'evaluate equals the MSE of predict')
    call check(loss > 0, 'evaluate is positive')

    call trainer%free()
    call check(.not. trainer%created(), 'trainer freed')
    call trainer%free() ! freeing twice is a no-op
  end subroutine test_train_predict_evaluate

  ! x(F, T, n) is C x[n][T][F]: the C side names a bad value by sample and
  ! element in its own 0-based order, and samples are independent.
  subroutine test_layout()
    type(insitra_trainer) :: trainer
    real(c_float) :: x(FI, T, 6), y(FO, T, 6), batch(FO, T, 6), one(FO, T, 1)
    integer :: stat, s
    character(len=64) :: want

    call trainer%create(cfg, MPI_COMM_WORLD)
    call make_samples(x, y, 3)
    x(2, 3, 5) = ieee_value(x(1, 1, 1), ieee_quiet_nan)
    call trainer%push_samples(x, y, stat)
    ! sample 5 -> 4; token 3, feature 2 -> element (3-1)*FI + (2-1) = 7;
    ! flat index 4*T*FI + 7 = 55.
    write(want, '(a, i0, a)') 'x of sample 4 holds nan at element 7 (flat index ', 4 * T * FI + 7, ')'
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, trim(want), 'NaN at x(2, 3, 5)')

    call make_samples(x, y, 3)
    call trainer%push_samples(x, y)
    call trainer%train_step()
    call trainer%predict(x, batch)
    do s = 1, 6
      call trainer%predict(x(:, :, s:s), one)
      call check(all(abs(one(:, :, 1) - batch(:, :, s)) <= 1e-5 * (1 + abs(batch(:, :, s)))), &
                 'predicting a sample alone = within a batch')
    end do
    call trainer%free()
  end subroutine test_layout

  subroutine test_errors()
    type(insitra_trainer) :: trainer, never_created
    type(insitra_config) :: bad
    real(c_float), target :: x(FI, T, 4), y(FO, T, 4)
    real(c_float) :: wrong_t(FI, T + 1, 4), wrong_n(FO, T, 3)
    real(c_double) :: loss
    integer(c_int64_t) :: count
    integer :: stat

    ! Configuration errors: the configuration is left as it was.
    call cfg%set('model.no_such_key', 3, stat)
    call expect_error(stat, INSITRA_STATUS_CONFIG_ERROR, "'model.no_such_key'", 'bad key')
    call cfg%set('model.d_model', 0, stat)
    call expect_error(stat, INSITRA_STATUS_CONFIG_ERROR, 'model.d_model', 'value out of range')
    call cfg%load_yaml_string('model: {d_model: 16]', stat)
    call expect_error(stat, INSITRA_STATUS_PARSE_ERROR, '<string>:', 'malformed YAML')
    call cfg%load_yaml('/nonexistent-dir/surrogate.yaml', stat)
    call expect_error(stat, INSITRA_STATUS_IO_ERROR, '/nonexistent-dir/surrogate.yaml', &
                      'missing YAML file')
    call cfg%validate(stat)
    call check(stat == INSITRA_STATUS_OK, 'the configuration is unchanged by failed calls')

    ! Relations between keys: the failure is agreed on every rank.
    call bad%create()
    call bad%set('model.d_model', 8)
    call bad%set('model.n_heads', 3)
    call trainer%create(bad, MPI_COMM_WORLD, stat)
    call expect_agreed_error(stat, INSITRA_STATUS_CONFIG_ERROR, 'model.n_heads', 'create: heads')
    call check(.not. trainer%created(), 'a failed create leaves the trainer empty')
    call bad%free()

    ! A handle that was never created.
    call never_created%samples_stored(count, stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'NULL', 'trainer never created')
    call never_created%push_samples(x, y, stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'not created', 'push, never created')

    call trainer%create(cfg, MPI_COMM_WORLD)
    call trainer%train_step(stat=stat)
    call expect_agreed_error(stat, INSITRA_STATUS_NOT_READY, 'empty', 'training with an empty store')

    ! Wrong shapes in a local call: this rank's error only.
    call make_samples(x, y, 0)
    call trainer%push_samples(wrong_t, y, stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'x has shape (3, 5, 4)', 'push, wrong T')
    call trainer%push_samples_device(2_c_int64_t, c_loc(x), c_loc(y), stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, "'device' is 'cpu'", &
                      'device push on a CPU trainer')
    call trainer%push_samples(x, wrong_n, stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'y has shape (2, 4, 3)', 'push, wrong n')
    call trainer%samples_stored(count)
    call check(count == 0, 'failed pushes store nothing')

    ! NaN in y: rejected whole, the store keeps what it had.
    call trainer%push_samples(x, y)
    y(1, 2, 3) = ieee_value(y(1, 1, 1), ieee_quiet_nan)
    call trainer%push_samples(x, y, stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'y of sample 2', 'NaN in y')
    call trainer%samples_stored(count)
    call check(count == 4, 'a push with NaN leaves the store as it was')
    call make_samples(x, y, 0)

    ! Wrong shapes in a collective call, on the last rank only: every rank
    ! fails, none waits; the others name the failing rank.
    if (rank == nranks - 1) then
      call trainer%evaluate(x, wrong_n, loss, stat)
    else
      call trainer%evaluate(x, y, loss, stat)
    end if
    if (rank == nranks - 1) then
      call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'y has shape (2, 4, 3)', &
                        'evaluate, wrong shape here')
    else
      call expect_error(stat, INSITRA_STATUS_REMOTE_ERROR, 'y has shape (2, 4, 3)', &
                        'evaluate, wrong shape on another rank')
    end if
    if (rank == nranks - 1) then
      call trainer%predict(wrong_t, y, stat)
    else
      call trainer%predict(x, y, stat)
    end if
    call check(stat /= INSITRA_STATUS_OK, 'predict fails on every rank when one has a wrong shape')
    ! ... and the trainer still works afterwards.
    call trainer%evaluate(x, y, loss, stat)
    call check(stat == INSITRA_STATUS_OK, 'evaluate after agreed failures: ' // insitra_last_error())
    call trainer%free()
  end subroutine test_errors

  ! A trainer on a communicator other than MPI_COMM_WORLD, passed as an
  ! integer handle (what `use mpi` and mpif.h codes hold): one trainer per rank.
  subroutine test_sub_communicator()
    type(MPI_Comm) :: alone
    type(insitra_trainer), allocatable :: trainer
    type(insitra_metrics) :: m
    real(c_float) :: x(FI, T, 8), y(FO, T, 8)

    call MPI_Comm_split(MPI_COMM_WORLD, rank, 0, alone)
    allocate(trainer)
    call trainer%create(cfg, alone%MPI_VAL)
    call make_samples(x, y, rank)
    call trainer%push_samples(x, y)
    call trainer%train_step(m)
    call check(m%tokens == int(BATCH * T, c_int64_t), 'a one-rank communicator trains alone')
    ! Deallocation runs the final procedure, which frees the trainer.
    deallocate(trainer)
    call MPI_Comm_free(alone)
  end subroutine test_sub_communicator

  ! A checkpoint restores the model exactly (the same loss on the same data),
  ! loaded by file name or from its directory; path_out names the file; a
  ! missing file fails on every rank and leaves path_out empty.
  subroutine test_checkpoint()
    type(insitra_trainer) :: trainer
    real(c_float) :: x(FI, T, CAP), y(FO, T, CAP)
    real(c_double) :: saved_loss, loss
    character(len=:), allocatable :: saved, loaded
    character(len=32) :: dir
    logical :: stop_now
    integer :: stat, step

    ! One directory per rank count: fortran_api and fortran_api_np2 may run at once.
    write(dir, '(a, i0)') 'fortran_ckpt_np', nranks
    call trainer%create(cfg, MPI_COMM_WORLD)
    call make_samples(x, y, 11 * rank)
    call trainer%push_samples(x, y)
    do step = 1, 3
      call trainer%train_step()
    end do
    call trainer%checkpoint_save(trim(dir), saved)
    call check(saved == trim(dir) // '/step-00000003.h5', 'checkpoint_save path_out: ' // saved)
    call trainer%evaluate(x, y, saved_loss)
    call trainer%train_step()
    call trainer%evaluate(x, y, loss)
    call check(.not. same_bits(loss, saved_loss), 'a step after the save changes the model')

    call trainer%checkpoint_load(saved, loaded)
    call check(loaded == saved, 'checkpoint_load of a file: path_out = ' // loaded)
    call trainer%evaluate(x, y, loss)
    call check(same_bits(loss, saved_loss), 'the loaded model gives the saved loss bit for bit')

    call trainer%train_step()
    call trainer%checkpoint_load(trim(dir), loaded)
    call check(loaded == saved, 'checkpoint_load of the directory finds its newest: ' // loaded)
    call trainer%evaluate(x, y, loss)
    call check(same_bits(loss, saved_loss), 'loading from the directory restores the model too')
    call trainer%checkpoint_save(trim(dir)) ! path_out is optional

    call trainer%should_stop(stop_now)
    call check(.not. stop_now, 'should_stop is false without a signal or deadline')

    call trainer%checkpoint_load(trim(dir) // '/step-99999999.h5', loaded, stat)
    call check(stat /= INSITRA_STATUS_OK, 'loading a missing file fails')
    call check(len(loaded) == 0, 'path_out is empty after a failed load')
    call check(len(insitra_last_error()) > 0, 'a failed load has a message')
    if (rank == 0) print '(a)', '  error as expected (missing checkpoint): ' // insitra_last_error()
    call trainer%free()
  end subroutine test_checkpoint

  logical function same_bits(a, b)
    real(c_double), intent(in) :: a, b
    same_bits = transfer(a, 0_c_int64_t) == transfer(b, 0_c_int64_t)
  end function same_bits

  ! Patch tokens: token t holds patch (P1, P2) with P1 fastest, feature
  ! f = v + V (a1 + p a2) (1-based: +1) is field(v, P1 p + a1, P2 p + a2).
  subroutine test_patches()
    integer, parameter :: V = 2, N1 = 4, N2 = 6, P = 2, NP1 = 2, NP2 = 3 ! NPk = Nk / P
    real(c_float) :: field(V, N1, N2), back(V, N1, N2), tokens(V * P * P, NP1 * NP2)
    real(c_float) :: field3(3, 2, 4, 6), back3(3, 2, 4, 6), tokens3(3 * 8, 6), wrong(V * P * P, 5)
    integer :: i, j, k, stat, bad, v0, a1, a2
    do k = 1, N2
      do j = 1, N1
        do i = 1, V
          field(i, j, k) = real(100 * k + 10 * j + i, c_float)
        end do
      end do
    end do
    call insitra_field_to_patches(field, P, tokens, stat=stat)
    call check(stat == INSITRA_STATUS_OK, 'field_to_patches 2-D: ' // insitra_last_error())
    bad = 0
    do k = 0, NP2 - 1
      do j = 0, NP1 - 1
        do i = 0, V * P * P - 1 ! feature i = v0 + V (a1 + P a2), 0-based
          v0 = mod(i, V)
          a1 = mod(i / V, P)
          a2 = i / (V * P)
          if (differs(tokens(i + 1, 1 + j + NP1 * k), field(v0 + 1, j * P + a1 + 1, k * P + a2 + 1))) &
            bad = bad + 1
        end do
      end do
    end do
    call check(bad == 0, 'patch tokens are the blocks of the field, patch index 1 fastest')
    back = -1
    call insitra_patches_to_field(tokens, P, back, stat=stat)
    call check(stat == INSITRA_STATUS_OK .and. same(field, back, size(field)), 'patches_to_field 2-D round trip')
    call random_number(field3)
    call insitra_field_to_patches(field3, P, tokens3, stat=stat)
    call check(stat == INSITRA_STATUS_OK, 'field_to_patches 3-D: ' // insitra_last_error())
    ! the last token is the last block, (:, 1:2, 3:4, 5:6), in its own order
    bad = 0
    do i = 0, 3 * 8 - 1
      v0 = mod(i, 3)
      a1 = mod(i / 3, 2)
      a2 = mod(i / 6, 2)
      k = (i - mod(i, 12)) / 12
      if (differs(tokens3(i + 1, 6), field3(v0 + 1, a1 + 1, a2 + 3, k + 5))) bad = bad + 1
    end do
    call check(bad == 0, 'the last 3-D token is the last block')
    back3 = -1
    call insitra_patches_to_field(tokens3, P, back3, stat=stat)
    call check(stat == INSITRA_STATUS_OK .and. same(field3, back3, size(field3)), 'patches_to_field 3-D round trip')
    call insitra_field_to_patches(field, P, wrong, stat=stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'tokens has shape (8, 5)', 'wrong tokens shape')
    call insitra_field_to_patches(field, 4, tokens, stat=stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'field axis 3 has 6 points, not a multiple of patch = 4', &
                      'patch not dividing the block')
  end subroutine test_patches

  ! Whether two reals differ at all (the copies must be exact).
  logical function differs(a, b)
    real(c_float), intent(in) :: a, b
    differs = abs(a - b) > 0
  end function differs

  ! Whether a(1:n) and b(1:n) hold the same values (arrays of any shape).
  logical function same(a, b, n)
    integer, intent(in) :: n
    real(c_float), intent(in) :: a(n), b(n)
    same = .not. any(abs(a - b) > 0)
  end function same

  ! The surrogate: from an export and from the live trainer, it predicts what
  ! the trainer does, bit for bit; a wrong shape is refused locally.
  subroutine test_surrogate()
    type(insitra_trainer) :: trainer
    type(insitra_surrogate) :: s
    real(c_float), allocatable :: x(:,:,:), y(:,:,:), pred(:,:,:), got(:,:,:)
    real(c_double), allocatable, target :: field(:,:)
    integer(c_int64_t), target :: step_count
    character(len=64) :: path
    integer :: stat, k

    write(path, '(a, i0, a)') 'fortran-surrogate-np', nranks, '.h5'
    call trainer%create(cfg, MPI_COMM_WORLD)
    allocate(x(FI, T, CAP), y(FO, T, CAP), pred(FO, T, CAP), got(FO, T, CAP))
    call make_samples(x, y, 3 * rank)
    call trainer%push_samples(x, y)
    do k = 1, 3
      call trainer%train_step()
    end do
    call trainer%predict(x, pred)
    call trainer%export_save(trim(path))
    call s%create(trim(path), BATCH, MPI_COMM_WORLD)
    call check(s%created(), 'surrogate created from the export')
    call s%predict(x, got)
    call check(all(transfer(got, [0]) == transfer(pred, [0])), &
               'the surrogate from the export predicts what the trainer does, bit for bit')
    call s%create_from_trainer(trainer, BATCH)      ! over a live one: the old one is freed
    got = 0
    call s%predict(x, got)
    call check(all(transfer(got, [0]) == transfer(pred, [0])), 'the surrogate from the trainer predicts what the trainer does')
    call s%predict(x, got(:, :, 1:2), stat=stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'and y_out (2, 4, 2)', 'surrogate predict, wrong n')
    call s%free()
    call check(.not. s%created(), 'surrogate freed')

    ! checkpoint arrays: Fortran order reversed, the piece checked
    allocate(field(0:5, 0:3))
    call trainer%checkpoint_add_array('field', field, global_shape=[4_c_int64_t], offset=[0_c_int64_t], &
                                      count=[4_c_int64_t], stat=stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'one value per dimension', 'add_array, rank')
    call trainer%checkpoint_add_array('field', field, global_shape=[4_c_int64_t, 2_c_int64_t], &
                                      offset=[0_c_int64_t, 3_c_int64_t], count=[4_c_int64_t, 1_c_int64_t], &
                                      mem_offset=[1_c_int64_t, 1_c_int64_t], stat=stat)
    call expect_error(stat, INSITRA_STATUS_INVALID_ARGUMENT, 'dimension 0: offset + count is beyond', &
                      'add_array, a piece beyond the array (C dimension 0 = the last Fortran one)')
    call trainer%checkpoint_add_scalar('steps', step_count, stat=stat)
    call check(stat == INSITRA_STATUS_OK, 'add_scalar')
    call trainer%checkpoint_clear_arrays()
    call trainer%free()
    if (rank == 0) then
      open(newunit=k, file=trim(path), status='old')
      close(k, status='delete')
    end if
  end subroutine test_surrogate

end program test_api

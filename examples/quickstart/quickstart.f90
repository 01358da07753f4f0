! examples/quickstart in Fortran: the program of quickstart.c with the
! insitra module. Each rank advects and diffuses a wave on its own periodic
! rod, pushes windows u(t) -> u(t + dt) and takes a training step; at the end
! it compares the surrogate with the solver and writes a checkpoint.
!   mpiexec -n 2 ./quickstart_fortran quickstart.yaml
! A call without stat= that fails prints insitra's message and ends the
! program; with stat=, the program decides (see the checkpoint below).
program quickstart
  use, intrinsic :: iso_c_binding, only: c_float, c_double
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use mpi_f08
  use insitra
  implicit none

  integer, parameter :: CELLS = 128, T = 32, N = 8, STEPS = 200  ! T must be model.seq_len
  real(c_float) :: u(0:CELLS - 1), next(0:CELLS - 1)
  real(c_float) :: x(1, T, N), y(1, T, N), y_pred(1, T, N)  ! C's x[N][T][1]
  real(c_double) :: loss, base
  type(insitra_config) :: cfg
  type(insitra_trainer) :: trainer
  type(insitra_metrics) :: m
  character(len=4096) :: yaml
  character(len=:), allocatable :: path
  integer :: rank, ranks, step, i, ierr

  call MPI_Init()
  call MPI_Comm_rank(MPI_COMM_WORLD, rank)
  call MPI_Comm_size(MPI_COMM_WORLD, ranks)
  yaml = 'quickstart.yaml'
  if (command_argument_count() > 0) call get_command_argument(1, yaml)

  call cfg%create()
  call cfg%load_yaml(trim(yaml))
  call trainer%create(cfg, MPI_COMM_WORLD)  ! collective

  do i = 0, CELLS - 1
    u(i) = sin(6.2831853 * (1 + rank) * i / CELLS) + 0.5 * cos(6.2831853 * 5 * i / CELLS)
  end do
  do step = 0, STEPS - 1
    call advance(u, next)
    call windows(u, step, x)
    call windows(next, step, y)
    call trainer%push_samples(x, y)  ! local: this rank's store, no copy made
    call trainer%train_step(m)       ! collective
    u = next
  end do

  ! Held out: windows at offsets never pushed, from the next solver step.
  call advance(u, next)
  call windows(u, CELLS / (2 * N), x)
  call windows(next, CELLS / (2 * N), y)
  call trainer%evaluate(x, y, loss)   ! collective: global mean squared error
  call trainer%predict(x, y_pred)     ! collective
  base = sum(real(y - x, c_double)**2) / (N * T)
  call MPI_Allreduce(MPI_IN_PLACE, base, 1, MPI_DOUBLE_PRECISION, MPI_SUM, MPI_COMM_WORLD)

  call trainer%checkpoint_save('checkpoints', path, stat=ierr)  ! collective
  if (ierr /= INSITRA_STATUS_OK) then
    if (rank == 0) print '(a)', 'no checkpoint: ' // insitra_last_error()
    path = '(none)'
  end if
  if (rank == 0) print '(a, i0, a, i0, a, es10.3, a, es10.3, a, es10.3, a, a)', &
    'quickstart (Fortran): ', ranks, ' ranks, ', STEPS, ' steps, training loss ', m%loss, &
    ', held-out loss ', loss, ' (predicting no change: ', base / ranks, '), checkpoint ', path
  call trainer%free()  ! collective
  call cfg%free()
  call MPI_Finalize()
  if (.not. ieee_is_finite(loss)) error stop 1

contains

  subroutine advance(u, next)  ! one explicit step
    real(c_float), intent(in) :: u(0:)
    real(c_float), intent(out) :: next(0:)
    integer :: i
    do i = 0, CELLS - 1
      associate (l => u(modulo(i - 1, CELLS)), r => u(modulo(i + 1, CELLS)))
        next(i) = u(i) - 0.5 * (u(i) - l) + 0.05 * (l - 2 * u(i) + r)
      end associate
    end do
  end subroutine advance

  subroutine windows(u, shift, x)  ! x(1, T, N): N windows of T cells
    real(c_float), intent(in) :: u(0:)
    integer, intent(in) :: shift
    real(c_float), intent(out) :: x(:, :, :)
    integer :: s, j
    do s = 0, N - 1
      do j = 0, T - 1
        x(1, j + 1, s + 1) = u(modulo(s * CELLS / N + shift + j, CELLS))
      end do
    end do
  end subroutine windows

end program quickstart

# Spack package for insitra. See docs/install.md ("Install with Spack").

import os

from spack.package import *


def _checkout():
    """The git checkout holding this package repository (spack/packages/insitra/)."""
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


class Insitra(CMakePackage, CudaPackage):
    """In-situ transformer training for MPI simulation codes: a C library, with
    a Fortran 2008 module, that lets a running simulation train a transformer
    surrogate of its own physics; each rank trains on the samples of its own
    subdomain and only gradients travel."""

    # No public release yet: the source is the committed state of the git
    # checkout this repository lives in (`spack develop insitra@main` builds
    # an uncommitted tree instead).
    git = "file://" + _checkout()

    version("main", branch="main")

    variant("fortran", default=False, description="Build the Fortran module (use insitra)")
    variant("nccl", default=False, description="Use NCCL for the GPU collectives")
    variant(
        "shared", default=False, description="Build shared libraries instead of libinsitra.a"
    )

    depends_on("c", type="build")
    depends_on("fortran", type="build", when="+fortran")
    # run: find_package(insitra) users and the smoke test configure with CMake
    # and find libyaml through pkg-config, as insitraConfig.cmake does.
    depends_on("cmake@3.24:", type=("build", "run"))
    depends_on("pkgconfig", type=("build", "run"))

    depends_on("mpi")
    depends_on("hdf5+mpi")
    depends_on("blas")
    # Attention calls sgemm inside OpenMP loops: OpenBLAS must use OpenMP.
    depends_on("openblas threads=openmp", when="^openblas")
    depends_on("libyaml")
    # bf16 GEMMs in cuBLASLt, graph capture of NCCL calls
    depends_on("cuda@12:", when="+cuda")
    depends_on("nccl@2.18:", when="+nccl")

    conflicts("+nccl", when="~cuda", msg="NCCL carries the CUDA backend's collectives: add +cuda")
    conflicts(
        "cuda_arch=none",
        when="+cuda",
        msg="name the GPU architecture, e.g. cuda_arch=90 for H100 and H200",
    )
    conflicts("~nccl", when="+cuda", msg="the CUDA backend runs its collectives through NCCL: add +nccl")
    # bf16 tensor cores: Ampere (sm_80) and newer
    for _arch in ("50", "52", "53", "60", "61", "62", "70", "72", "75"):
        conflicts(f"cuda_arch={_arch}", when="+cuda", msg="the CUDA backend needs sm_80 or newer (bf16)")
    conflicts("^mpich~fortran", when="+fortran", msg="the Fortran module uses mpi_f08")

    test_requires_compiler = True

    def cmake_args(self):
        spec = self.spec
        args = [
            self.define_from_variant("INSITRA_ENABLE_FORTRAN", "fortran"),
            self.define_from_variant("INSITRA_ENABLE_CUDA", "cuda"),
            self.define_from_variant("INSITRA_ENABLE_NCCL", "nccl"),
            self.define_from_variant("BUILD_SHARED_LIBS", "shared"),
            # insitra's name for BUILD_TESTING: tests, examples, benchmarks.
            self.define("INSITRA_ENABLE_TESTING", self.run_tests),
            self.define("MPI_C_COMPILER", spec["mpi"].mpicc),
            # FindBLAS vendor; cblas.h is looked for in the dependencies' prefixes.
            self.define("BLA_VENDOR", "OpenBLAS" if spec["blas"].name == "openblas" else "All"),
        ]
        if spec.satisfies("+fortran"):
            args.append(self.define("MPI_Fortran_COMPILER", spec["mpi"].mpifc))
        if spec.satisfies("+cuda"):
            args.append(self.define_from_variant("CMAKE_CUDA_ARCHITECTURES", "cuda_arch"))
        return args

    def test_synthetic_train(self):
        """build the installed examples against insitra, run synthetic_train on one rank"""
        spec = self.spec
        prefixes = [self.prefix]
        prefixes += [dep.prefix for dep in spec.traverse(root=False, deptype=("link", "run"))]
        options = [
            "-S",
            self.prefix.share.insitra.examples,
            "-B",
            "build",
            self.define("CMAKE_PREFIX_PATH", prefixes),
            self.define("MPI_HOME", spec["mpi"].prefix),
        ]
        cmake = which(spec["cmake"].prefix.bin.cmake, required=True)
        cmake(*options)
        cmake("--build", "build")

        launcher = which("mpiexec", path=spec["mpi"].prefix.bin) or which("srun")
        if launcher is None:
            raise SkipTest("no mpiexec in the MPI prefix and no srun: cannot start the example")
        out = launcher("-n", "1", join_path("build", "c", "synthetic_train"), output=str, error=str)
        assert "held-out relative L2 error" in out, out

"""panic-lab: what a Linux VM on Hyper-V/Azure does after a kernel panic, reproduced under QEMU/libvirt.

Pipeline, one module per stage: image -> domain -> console -> transcript -> verdict -> report.
"""
__version__ = "0.1.0"

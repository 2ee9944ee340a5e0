/*
 * Hearth's accelerator probe guest (see src/vmm/probe.ts, which embeds the bytes).
 *
 * A 64 KiB "BIOS" image: reset vector -> real mode -> long mode directly
 * (PAE paging, identity map of 1 GiB with 2 MiB pages) -> write 64 MiB of RAM
 * four times -> write 0x21 to isa-debug-exit (port 0xf4), so QEMU exits with
 * status (0x21 << 1) | 1 = 67. Exit status 67 within the deadline proves the
 * accelerator runs ordinary long-mode guest code at a sane speed (a PVM host's
 * /dev/kvm runs this >100x slower than TCG, or aborts on `-cpu host`).
 *
 * Build: as --32 -o stub.o probe-stub.S && objcopy -O binary -j .text stub.o stub.bin
 * The image is mapped at 0xF0000 (low alias) and 0xFFFF0000 (reset vector).
 */
    .code16
    .section .text
    .globl _start
_start:
    cli
    ljmp $0xF000, $(real - _start)
real:
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    /* page tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD) */
    movl $0x2003, %eax
    movl %eax, 0x1000
    movl $0, 0x1004
    movl $0x3003, %eax
    movl %eax, 0x2000
    movl $0, 0x2004
    movl $0x83, %eax
    movl %eax, 0x3000
    movl $0, 0x3004
    /* gdt descriptor is in ROM: use cs-relative addressing via ds=0xF000 */
    movw $0xF000, %ax
    movw %ax, %ds
    lgdtl (gdtr - _start)
    xorw %ax, %ax
    movw %ax, %ds
    movl %cr4, %eax
    orl $0x20, %eax          /* PAE */
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx   /* EFER */
    rdmsr
    orl $0x100, %eax         /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax    /* PG | PE */
    movl %eax, %cr0
    ljmpl $0x08, $(0xF0000 + long64 - _start)
    .code64
long64:
    movw $0x10, %ax
    movw %ax, %ds
    /* map 1 GiB with 2 MiB pages, then touch 64 MiB of RAM four times */
    movl $1, %ecx
2:  movq %rcx, %rax
    shlq $21, %rax
    orq $0x83, %rax
    movq %rax, 0x3000(,%rcx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 2b
    movq %cr3, %rax
    movq %rax, %cr3
    movl $4, %edx
3:  movq $0x200000, %rdi
    movq $(64 * 1024 * 1024 / 8), %rcx
    movq %rdx, %rax
    rep stosq
    decl %edx
    jnz 3b
    movb $0x21, %al
    outb %al, $0xf4
1:  hlt
    jmp 1b
    .p2align 3
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF  /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF  /* 0x10: data */
gdtr:
    .word gdtr - gdt - 1
    .long 0xF0000 + gdt - _start
    .org 0xFFF0
reset:
    .code16
    ljmp $0xF000, $(_start - _start)
    .org 0x10000, 0xF4

// weaken-version-need IN OUT VERSION...
//
// Copies the ELF64 shared library IN to OUT with the named symbol-version requirements (e.g. GLIBCXX_3.4.32) marked
// VER_FLG_WEAK. The dynamic loader fails a library outright when a library it needs lacks a required version
// ("version `GLIBCXX_3.4.32' not found"); a weak requirement that is missing is accepted, and only the symbols bound
// to that version have to be found some other way (or never be looked up).
//
// Why this exists: TorchSharp 0.107's libLibTorchSharp.so was built with GCC 13, whose <iostream> emits an undefined
// reference to std::ios_base_library_init() (GLIBCXX_3.4.32) as a link-time anchor only: nothing calls it and no
// relocation refers to it, so Debian 12's libstdc++ (GCC 12, up to GLIBCXX_3.4.30) serves the library fully once
// the one requirement is weak. A preloaded library that defines the symbol does not help: the loader checks each
// version requirement against the library named in it (libstdc++.so.6), not against the whole process.
//
// Exit status: 0 when every named version was found and marked, 1 when one was not required by IN, 2 on bad input.
#include <elf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char *read_file(const char *path, long *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(*size);
    if (!data || fread(data, 1, *size, f) != (size_t)*size) { fprintf(stderr, "%s: cannot read\n", path); fclose(f); free(data); return NULL; }
    fclose(f);
    return data;
}

int main(int argc, char **argv)
{
    if (argc < 4) { fprintf(stderr, "usage: %s IN OUT VERSION...   (e.g. libLibTorchSharp.so patched.so GLIBCXX_3.4.32)\n", argv[0]); return 2; }
    long size;
    unsigned char *elf = read_file(argv[1], &size);
    if (!elf) return 2;
    Elf64_Ehdr *eh = (Elf64_Ehdr *)elf;
    if (size < (long)sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_ident[EI_DATA] != ELFDATA2LSB)
    { fprintf(stderr, "%s: not a little-endian ELF64 file\n", argv[1]); return 2; }
    if (eh->e_shoff == 0 || eh->e_shoff + (long)eh->e_shnum * sizeof(Elf64_Shdr) > (unsigned long)size)
    { fprintf(stderr, "%s: no section headers\n", argv[1]); return 2; }
    Elf64_Shdr *sh = (Elf64_Shdr *)(elf + eh->e_shoff);

    int wanted = argc - 3;
    int *marked = calloc(wanted, sizeof(int));
    for (int s = 0; s < eh->e_shnum; s++)
    {
        if (sh[s].sh_type != SHT_GNU_verneed) continue;
        if (sh[s].sh_link >= eh->e_shnum) { fprintf(stderr, "%s: bad string table link\n", argv[1]); return 2; }
        const char *strtab = (const char *)elf + sh[sh[s].sh_link].sh_offset;
        unsigned char *p = elf + sh[s].sh_offset;
        for (unsigned n = 0; n < sh[s].sh_info; n++)
        {
            Elf64_Verneed *need = (Elf64_Verneed *)p;
            unsigned char *q = p + need->vn_aux;
            for (unsigned a = 0; a < need->vn_cnt; a++)
            {
                Elf64_Vernaux *aux = (Elf64_Vernaux *)q;
                const char *name = strtab + aux->vna_name;
                for (int w = 0; w < wanted; w++)
                    if (strcmp(name, argv[3 + w]) == 0)
                    {
                        aux->vna_flags |= VER_FLG_WEAK;
                        marked[w] = 1;
                        printf("%s: %s from %s marked weak\n", argv[2], name, strtab + need->vn_file);
                    }
                q += aux->vna_next;
            }
            p += need->vn_next;
        }
    }

    int missing = 0;
    for (int w = 0; w < wanted; w++)
        if (!marked[w]) { fprintf(stderr, "%s does not require version %s; nothing to weaken\n", argv[1], argv[3 + w]); missing = 1; }
    if (missing) return 1;

    FILE *out = fopen(argv[2], "wb");
    if (!out || fwrite(elf, 1, size, out) != (size_t)size || fclose(out) != 0) { perror(argv[2]); return 2; }
    return 0;
}

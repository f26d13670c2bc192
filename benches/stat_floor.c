// The floor of a no-op over a Tiny-ImageNet tree: only a stat of every training file,
// relative to its open folder, on one thread (docs/performance.md, issue 31).
//   cc -O2 benches/stat_floor.c -o /tmp/stat_floor
//   /tmp/stat_floor /tmp/bench-tree/tiny-imagenet 0   # fstatat
//   /tmp/stat_floor /tmp/bench-tree/tiny-imagenet 1   # statx: size, mtime, inode only
//   /tmp/stat_floor /tmp/bench-tree/tiny-imagenet 2   # no stat: the folder reads alone
#define _GNU_SOURCE
#include <stdio.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <string.h>
#include <stdlib.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  // walk root/train/<class>/images/*.JPEG, fstatat each
  const char* root=argv[1]; int mode=atoi(argv[2]);
  char path[4096]; long n=0; double t0=now();
  snprintf(path,sizeof path,"%s/train",root);
  DIR* d=opendir(path); struct dirent* e;
  while((e=readdir(d))){ if(e->d_name[0]=='.')continue;
    char p2[4096]; snprintf(p2,sizeof p2,"%s/%s/images",path,e->d_name);
    int fd=open(p2,O_RDONLY|O_DIRECTORY); DIR* d2=fdopendir(fd); struct dirent* f;
    while((f=readdir(d2))){ if(f->d_name[0]=='.')continue;
      if(mode==0){struct stat st; fstatat(fd,f->d_name,&st,0);} 
      else if(mode==1){struct statx sx; statx(fd,f->d_name,AT_STATX_DONT_SYNC,STATX_SIZE|STATX_MTIME|STATX_INO,&sx);}
      n++;}
    closedir(d2);}
  printf("%ld files %.3f s\n",n,now()-t0);
}

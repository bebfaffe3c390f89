/* LAMB's pass 1 (moments written, sums of p*p and u*u) on one thread in L1: what its two
 * float64 sums cost beside the rule.  The Cython loop adds each element into one of 64 float64
 * lanes (element i into lane i % 64, in order: the bit-exact order every backend shares).
 *
 *   gcc -O3 -mavx2 -fno-math-errno -ffp-contract=off bench/lamb_sums.c -o /tmp/lamb_sums -lm
 *   /tmp/lamb_sums
 *
 * (the flags of the Cython AVX2 build).  Measured 2026-12-07 on the AVX2 EPYC VM: the rule alone
 * 0.44 ns per element, with float32 lanes 0.56, with the 64 float64 lanes 0.93-0.97 staged or
 * direct: 2 x 16 ymm of lanes do not fit AVX2's 16 registers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define N 16384
static float P[N], G[N], M[N], V[N]; float U[N];
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+1e-9*t.tv_nsec;}
/* the rule: the moments updated in place, LAMB's direction u returned (no weight decay) */
static inline float rule(int i, float b1, float ob1, float b2, float ob2, float ibc1, float ibc2, float eps){
  float g=G[i], m=b1*M[i]+ob1*g, v=b2*V[i]+ob2*g*g;
  M[i]=m; V[i]=v;
  return (m*ibc1)/(sqrtf(v)*ibc2+eps);
}
__attribute__((noinline)) void stage(int lo, int hi, double* part, float b1, float ob1, float b2, float ob2, float ibc1, float ibc2, float eps){
  float t0[64], t1[64]; double l0[64], l1[64]; double a0=0,a1=0;
  for(int l=0;l<64;l++){l0[l]=0;l1[l]=0;}
  for(int c=lo;c<hi;c+=64){
    for(int i=c;i<c+64;i++){
      float p=P[i], u=rule(i,b1,ob1,b2,ob2,ibc1,ibc2,eps);
      t0[i-c]=p*p; t1[i-c]=u*u;}
    for(int l=0;l<64;l++) l0[l]+=(double)t0[l];
    for(int l=0;l<64;l++) l1[l]+=(double)t1[l];
  }
  for(int l=0;l<64;l++){a0+=l0[l];a1+=l1[l];}
  part[0]=a0; part[1]=a1;
}
__attribute__((noinline)) void direct(int lo, int hi, double* part, float b1, float ob1, float b2, float ob2, float ibc1, float ibc2, float eps){
  double l0[64], l1[64]; double a0=0,a1=0;
  for(int l=0;l<64;l++){l0[l]=0;l1[l]=0;}
  for(int c=lo;c<hi;c+=64){
    for(int i=c;i<c+64;i++){
      float p=P[i], u=rule(i,b1,ob1,b2,ob2,ibc1,ibc2,eps);
      l0[i-c]+=(double)(p*p); l1[i-c]+=(double)(u*u);}
  }
  for(int l=0;l<64;l++){a0+=l0[l];a1+=l1[l];}
  part[0]=a0; part[1]=a1;
}
__attribute__((noinline)) void nosum(int lo, int hi, double* part, float b1, float ob1, float b2, float ob2, float ibc1, float ibc2, float eps){
  for(int i=lo;i<hi;i++){
      float u=rule(i,b1,ob1,b2,ob2,ibc1,ibc2,eps);
      U[i]=u;}
  part[0]=0;
}

__attribute__((noinline)) void f32lane(int lo, int hi, double* part, float b1, float ob1, float b2, float ob2, float ibc1, float ibc2, float eps){
  float l0[64], l1[64]; double a0=0,a1=0;
  for(int l=0;l<64;l++){l0[l]=0;l1[l]=0;}
  for(int c=lo;c<hi;c+=64){
    for(int i=c;i<c+64;i++){
      float p=P[i], u=rule(i,b1,ob1,b2,ob2,ibc1,ibc2,eps);
      l0[i-c]+=p*p; l1[i-c]+=u*u;}
  }
  for(int l=0;l<64;l++){a0+=l0[l];a1+=l1[l];}
  part[0]=a0; part[1]=a1;
}

int main(){
  for(int i=0;i<N;i++){P[i]=i*1e-4f;G[i]=1e-3f*(i%7);M[i]=0;V[i]=1e-4f;}
  double part[2]; const char* names[4]={"64 float64 lanes, staged (as the Cython loop)","64 float64 lanes, direct","the rule alone (no sums)","64 float32 lanes (other bits)"};
  void (*f[4])(int,int,double*,float,float,float,float,float,float,float)={stage,direct,nosum,f32lane};
  for(int r=0;r<3;r++) for(int k=0;k<4;k++){
    double t=now(); for(int it=0;it<4000;it++){ for(int b=0;b<N;b+=4096) f[k](b,b+4096,part,0.9f,0.1f,0.999f,0.001f,1.f,1.f,1e-6f);}
    t=now()-t; printf("%-45s %.3f ns/elem\n",names[k],t/4000/N*1e9);}
}

#!/bin/bash
exec > _scheduler-stdout.txt
exec 2> _scheduler-stderr.txt
#SBATCH --gres=gpu:1


'/root/.pyenv/versions/3.11.7/bin/hpcai-model' 'predict' '--input' '.' '--output' 'outputs'  > 'hpcai-model.out' 2> 'hpcai-model.err'

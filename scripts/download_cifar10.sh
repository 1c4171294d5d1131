#!/usr/bin/env bash
# Download the official CIFAR-10 python batches into DATASET_FOLDER/cifar-10-batches-py and check the
# official md5 checksums. The trainer itself never downloads anything.
#     bash scripts/download_cifar10.sh [DATASET_FOLDER]      (default: data/cifar_dataset)
set -euo pipefail

folder="${1:-data/cifar_dataset}"
url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
mkdir -p "$folder"
archive="$(mktemp)"
trap 'rm -f "$archive"' EXIT

curl --fail --location --silent --show-error --output "$archive" "$url"
echo "c58f30108f718f92721af3b95e74349a  $archive" | md5sum --check --quiet
tar -xzf "$archive" -C "$folder"
(cd "$folder/cifar-10-batches-py" && md5sum --check --quiet) <<'MD5'
c99cafc152244af753f735de768cd75f  data_batch_1
d4bba439e000b95fd0a9bffe97cbabec  data_batch_2
54ebc095f3ab1f0389bbae665268c751  data_batch_3
634d18415352ddfa80567beed471001a  data_batch_4
482c414d41f54cd18b22e5b47cb7c3cb  data_batch_5
40351d587109b95175f43aff81a1287e  test_batch
5ff9c542aee3614f3951f8cda6e48888  batches.meta
MD5
echo "CIFAR-10 is in $folder/cifar-10-batches-py (checksums verified)"

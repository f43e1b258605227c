#!/bin/sh
# Makes the certificates the TLS tests use, with the openssl command, into
# the directory given ($1, created). EC P-256 keys (fast to make).
#   ca.pem ca.key            the test CA
#   server.pem server.key    signed by it: localhost, 127.0.0.1, ::1
#   other.pem other.key      signed by it: other.example only
#   expired.pem expired.key  signed by it: localhost, 127.0.0.1, expired in 2020
#   self.pem self.key        self-signed: localhost, 127.0.0.1
#   client.pem client.key    signed by the CA, for client authentication
#   rogue-ca.pem             another CA; rogue-client.pem/.key signed by it
set -eu
dir=$1
mkdir -p "$dir"
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() { # name subject
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

leaf() { # name ca subject san usage
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$3" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' \
    "$5" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
    -out "$1.pem" -days 3650 -extfile "$1.ext" 2>/dev/null
}

ca ca "netev test CA"
ca rogue-ca "netev rogue CA"
leaf server ca localhost "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" serverAuth
leaf other ca other.example "subjectAltName=DNS:other.example" serverAuth
leaf client ca "netev client" "subjectAltName=DNS:client.example" clientAuth
leaf rogue-client rogue-ca "rogue client" "subjectAltName=DNS:client.example" clientAuth

# Expired: `openssl ca` can set the validity dates in the past.
key expired.key
openssl req -new -key expired.key -out expired.csr -subj "/CN=localhost" 2>/dev/null
mkdir -p ca-db
: > ca-db/index.txt
echo 1000 > ca-db/serial
cat > ca-db/ca.cnf <<EOF
[ca]
default_ca = test
[test]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
default_md = sha256
policy = anything
copy_extensions = none
[anything]
commonName = supplied
[ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
EOF
openssl ca -batch -config ca-db/ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
  -out expired.pem -startdate 20200101000000Z -enddate 20200102000000Z \
  -extensions ext -notext 2>/dev/null

# Self-signed, for the right names.
key self.key
openssl req -x509 -new -key self.key -out self.pem -days 3650 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "extendedKeyUsage=serverAuth" 2>/dev/null

rm -f ./*.csr ./*.ext ./*.srl
echo ok > done

// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title TkmsRegistry
/// @notice On-chain registry of a tkms threshold-KMS cluster: who may act (manager, gateways,
///         runners), which nodes hold shares (index, libp2p peer id, endpoints, node public key,
///         attestation digest), and the key epochs published by the manager (epoch, t, n,
///         public key, hash of the public shares, DKG/reshare transcript hash).
/// @dev    Governance model:
///         - The owner (ideally a multisig) appoints the manager, the gateways and the runners,
///           and registers, updates and removes node records. Ownership moves in two steps.
///         - The manager only publishes epochs. Epoch numbers strictly increase and start at 1
///           (0 means "no epoch yet"). `n` may not exceed the number of registered nodes.
///         - A reshare keeps the public key, so the manager may publish a new epoch with the
///           current key at any time. A *different* key (a fresh DKG) must first be approved
///           by the owner with `approveKeyChange(newKey)`; the approval is consumed by the
///           epoch that installs that key. The very first epoch (genesis DKG) needs no
///           approval. This way a compromised manager cannot swap the cluster key for one it
///           controls, nor (because node records are owner-only) plant nodes of its own.
///         - All keys (cluster key and node keys) are SEC1 compressed secp256k1 points:
///           33 bytes, prefix 0x02/0x03, canonical x (< p), and x must be the abscissa of a
///           curve point (checked with the modexp precompile, Euler's criterion).
///         - `gateway()` returns the *primary* gateway. The first gateway added becomes primary;
///           the owner can change it with `setPrimaryGateway`. The primary cannot be removed
///           while other gateways exist (switch primary first); removing the last gateway
///           clears it.
///         Every state change emits an event.
contract TkmsRegistry {
    // ---------------------------------------------------------------------------------------
    // Types
    // ---------------------------------------------------------------------------------------

    /// @notice A registered KMS node.
    /// @param index Shamir x-coordinate of the node's share (non-zero).
    /// @param peerId libp2p peer id, binary multihash form (1..64 bytes).
    /// @param endpoints Node endpoints (e.g. gRPC URLs, multiaddrs), 1..8 entries of 1..256 bytes.
    /// @param publicKey Node public key, SEC1 compressed secp256k1 (33 bytes); DKG shares are
    ///        ECIES-encrypted to it.
    /// @param attestationDigest Digest of the node's TEE attestation (zero when not attested).
    struct Node {
        uint16 index;
        bytes peerId;
        string[] endpoints;
        bytes publicKey;
        bytes32 attestationDigest;
    }

    /// @notice A published key epoch.
    /// @param epoch Epoch number (>= 1, strictly increasing).
    /// @param t Threshold (1 <= t <= n).
    /// @param n Committee size (n <= number of registered nodes at publication).
    /// @param publicKey Cluster public key, SEC1 compressed secp256k1 (33 bytes).
    /// @param publicSharesHash Hash of the public shares PK_i of this epoch (non-zero).
    /// @param transcriptHash Hash of the agreed DKG/reshare transcript (non-zero).
    /// @param publishedAt Block timestamp of publication.
    struct Epoch {
        uint64 epoch;
        uint16 t;
        uint16 n;
        bytes publicKey;
        bytes32 publicSharesHash;
        bytes32 transcriptHash;
        uint64 publishedAt;
    }

    // ---------------------------------------------------------------------------------------
    // Constants
    // ---------------------------------------------------------------------------------------

    /// @notice Length of a SEC1 compressed secp256k1 point.
    uint256 public constant COMPRESSED_KEY_LENGTH = 33;
    /// @notice Maximum length of a binary libp2p peer id.
    uint256 public constant MAX_PEER_ID_LENGTH = 64;
    /// @notice Maximum number of endpoints per node.
    uint256 public constant MAX_ENDPOINTS = 8;
    /// @notice Maximum length of one endpoint string, in bytes.
    uint256 public constant MAX_ENDPOINT_LENGTH = 256;

    /// @dev secp256k1 field prime.
    uint256 private constant P = 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f;

    // ---------------------------------------------------------------------------------------
    // Errors
    // ---------------------------------------------------------------------------------------

    /// @notice The caller is not the owner.
    error NotOwner(address caller);
    /// @notice The caller is not the pending owner.
    error NotPendingOwner(address caller);
    /// @notice The caller is not the manager.
    error NotManager(address caller);
    /// @notice The zero address was given where an account is required.
    error ZeroAddress();
    /// @notice The account is already a gateway.
    error GatewayAlreadyAdded(address account);
    /// @notice The account is not a gateway.
    error NotAGateway(address account);
    /// @notice The primary gateway cannot be removed while other gateways exist.
    error CannotRemovePrimaryGateway(address account);
    /// @notice No gateway is registered.
    error NoGateway();
    /// @notice The account is already a runner.
    error RunnerAlreadyAdded(address account);
    /// @notice The account is not a runner.
    error NotARunner(address account);
    /// @notice A key is not 33 bytes long.
    error InvalidKeyLength(uint256 length);
    /// @notice A key does not start with 0x02 or 0x03.
    error InvalidKeyPrefix(bytes1 prefix);
    /// @notice A key's x-coordinate is not canonical (>= p) or is not on the curve.
    error KeyNotOnCurve();
    /// @notice Node index 0 is not allowed (it is the Shamir secret's x-coordinate).
    error InvalidNodeIndex();
    /// @notice A node with this index is already registered.
    error NodeAlreadyRegistered(uint16 index);
    /// @notice No node with this index is registered.
    error UnknownNode(uint16 index);
    /// @notice The peer id is empty or longer than MAX_PEER_ID_LENGTH.
    error InvalidPeerId(uint256 length);
    /// @notice The peer id is already used by another node.
    error DuplicatePeerId(uint16 existingIndex);
    /// @notice The node public key is already used by another node.
    error DuplicateNodeKey(uint16 existingIndex);
    /// @notice The endpoint list is empty or longer than MAX_ENDPOINTS.
    error InvalidEndpointCount(uint256 count);
    /// @notice An endpoint is empty or longer than MAX_ENDPOINT_LENGTH.
    error InvalidEndpoint(uint256 position);
    /// @notice The epoch number is not greater than the current epoch.
    error EpochNotIncreasing(uint64 epoch, uint64 current);
    /// @notice The threshold is outside 1..n.
    error InvalidThreshold(uint16 t, uint16 n);
    /// @notice The committee is larger than the registered node set.
    error CommitteeTooLarge(uint16 n, uint256 registeredNodes);
    /// @notice A required hash is zero.
    error ZeroHash();
    /// @notice The epoch changes the public key without an owner approval for that key.
    error KeyChangeNotApproved(bytes32 keyHash);
    /// @notice The key to approve is the current key (a reshare needs no approval).
    error KeyUnchanged();
    /// @notice There is no pending key-change approval.
    error NoKeyChangePending();
    /// @notice No epoch has been published yet.
    error NoEpochPublished();
    /// @notice No epoch with this number was published.
    error UnknownEpoch(uint64 epoch);

    // ---------------------------------------------------------------------------------------
    // Events
    // ---------------------------------------------------------------------------------------

    /// @notice The owner started a transfer to `newOwner` (zero cancels a pending transfer).
    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner);
    /// @notice Ownership moved (also emitted at deployment with previousOwner = 0).
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    /// @notice The manager changed (zero = no manager: epoch publication disabled).
    event ManagerChanged(address indexed previousManager, address indexed newManager);
    /// @notice A gateway was added.
    event GatewayAdded(address indexed account);
    /// @notice A gateway was removed.
    event GatewayRemoved(address indexed account);
    /// @notice The primary gateway (returned by `gateway()`) changed.
    event PrimaryGatewayChanged(address indexed previousPrimary, address indexed newPrimary);
    /// @notice A runner was added.
    event RunnerAdded(address indexed account);
    /// @notice A runner was removed.
    event RunnerRemoved(address indexed account);
    /// @notice A node was registered.
    event NodeRegistered(
        uint16 indexed index, bytes peerId, string[] endpoints, bytes publicKey, bytes32 attestationDigest
    );
    /// @notice A node record was replaced.
    event NodeUpdated(
        uint16 indexed index, bytes peerId, string[] endpoints, bytes publicKey, bytes32 attestationDigest
    );
    /// @notice A node was removed.
    event NodeRemoved(uint16 indexed index);
    /// @notice The owner approved the next key change to `publicKey`.
    event KeyChangeApproved(bytes32 indexed keyHash, bytes publicKey);
    /// @notice The owner withdrew a pending key-change approval.
    event KeyChangeCancelled(bytes32 indexed keyHash);
    /// @notice The manager published an epoch.
    event EpochPublished(
        uint64 indexed epoch, uint16 t, uint16 n, bytes publicKey, bytes32 publicSharesHash, bytes32 transcriptHash
    );
    /// @notice The cluster public key changed (genesis epoch: previousKey is empty).
    event PublicKeyChanged(uint64 indexed epoch, bytes previousKey, bytes newKey);

    // ---------------------------------------------------------------------------------------
    // Storage
    // ---------------------------------------------------------------------------------------

    /// @notice Current owner.
    address public owner;
    /// @notice Account that may accept ownership (zero if none).
    address public pendingOwner;
    /// @notice Account allowed to publish epochs (zero if none).
    address public manager;

    address private _primaryGateway;
    address[] private _gateways;
    mapping(address => uint256) private _gatewayPos; // position + 1; 0 = absent

    address[] private _runners;
    mapping(address => uint256) private _runnerPos; // position + 1; 0 = absent

    mapping(uint16 => Node) private _nodes;
    uint16[] private _nodeIndices;
    mapping(uint16 => uint256) private _nodePos; // position + 1; 0 = absent
    mapping(bytes32 => uint16) private _indexByPeerId; // keccak256(peerId) => index
    mapping(bytes32 => uint16) private _indexByNodeKey; // keccak256(publicKey) => index

    mapping(uint64 => Epoch) private _epochs;
    uint64[] private _epochNumbers;
    uint64 private _currentEpoch;
    bytes private _currentKey;
    bytes32 private _approvedKeyHash;

    // ---------------------------------------------------------------------------------------
    // Modifiers and constructor
    // ---------------------------------------------------------------------------------------

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    modifier onlyManager() {
        if (msg.sender != manager) revert NotManager(msg.sender);
        _;
    }

    /// @notice Deploys the registry with the deployer as owner and no manager.
    constructor() {
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
    }

    // ---------------------------------------------------------------------------------------
    // Ownership (two-step)
    // ---------------------------------------------------------------------------------------

    /// @notice Starts an ownership transfer; `newOwner` must call `acceptOwnership`.
    /// @param newOwner Proposed owner; the zero address cancels a pending transfer.
    function transferOwnership(address newOwner) external onlyOwner {
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(msg.sender, newOwner);
    }

    /// @notice Completes an ownership transfer; callable only by the pending owner.
    function acceptOwnership() external {
        if (msg.sender != pendingOwner) revert NotPendingOwner(msg.sender);
        address previous = owner;
        owner = msg.sender;
        pendingOwner = address(0);
        emit OwnershipTransferred(previous, msg.sender);
    }

    // ---------------------------------------------------------------------------------------
    // Roles
    // ---------------------------------------------------------------------------------------

    /// @notice Sets the manager, the only account that may publish epochs.
    /// @param newManager New manager; zero disables epoch publication (e.g. to revoke a
    ///        compromised manager).
    function setManager(address newManager) external onlyOwner {
        address previous = manager;
        manager = newManager;
        emit ManagerChanged(previous, newManager);
    }

    /// @notice Adds a gateway. The first gateway becomes the primary one.
    function addGateway(address account) external onlyOwner {
        if (account == address(0)) revert ZeroAddress();
        if (_gatewayPos[account] != 0) revert GatewayAlreadyAdded(account);
        _gateways.push(account);
        _gatewayPos[account] = _gateways.length;
        emit GatewayAdded(account);
        if (_primaryGateway == address(0)) {
            _primaryGateway = account;
            emit PrimaryGatewayChanged(address(0), account);
        }
    }

    /// @notice Removes a gateway. The primary gateway can only be removed when it is the last
    ///         one (then `gateway()` reverts with NoGateway until a new one is added).
    function removeGateway(address account) external onlyOwner {
        uint256 pos = _gatewayPos[account];
        if (pos == 0) revert NotAGateway(account);
        if (account == _primaryGateway) {
            if (_gateways.length > 1) revert CannotRemovePrimaryGateway(account);
            _primaryGateway = address(0);
            emit PrimaryGatewayChanged(account, address(0));
        }
        _removeAddress(_gateways, _gatewayPos, account, pos);
        emit GatewayRemoved(account);
    }

    /// @notice Makes an existing gateway the primary one returned by `gateway()`.
    function setPrimaryGateway(address account) external onlyOwner {
        if (_gatewayPos[account] == 0) revert NotAGateway(account);
        address previous = _primaryGateway;
        _primaryGateway = account;
        emit PrimaryGatewayChanged(previous, account);
    }

    /// @notice Adds a runner.
    function addRunner(address account) external onlyOwner {
        if (account == address(0)) revert ZeroAddress();
        if (_runnerPos[account] != 0) revert RunnerAlreadyAdded(account);
        _runners.push(account);
        _runnerPos[account] = _runners.length;
        emit RunnerAdded(account);
    }

    /// @notice Removes a runner.
    function removeRunner(address account) external onlyOwner {
        uint256 pos = _runnerPos[account];
        if (pos == 0) revert NotARunner(account);
        _removeAddress(_runners, _runnerPos, account, pos);
        emit RunnerRemoved(account);
    }

    // ---------------------------------------------------------------------------------------
    // Nodes
    // ---------------------------------------------------------------------------------------

    /// @notice Registers a new node.
    /// @param index Non-zero Shamir index, not yet registered.
    /// @param peerId Binary libp2p peer id (1..64 bytes), unique among nodes.
    /// @param endpoints 1..8 endpoints of 1..256 bytes each.
    /// @param publicKey Node key, 33-byte compressed secp256k1 point, unique among nodes.
    /// @param attestationDigest Attestation digest (zero allowed: not attested).
    function registerNode(
        uint16 index,
        bytes calldata peerId,
        string[] calldata endpoints,
        bytes calldata publicKey,
        bytes32 attestationDigest
    ) external onlyOwner {
        if (index == 0) revert InvalidNodeIndex();
        if (_nodePos[index] != 0) revert NodeAlreadyRegistered(index);
        _writeNode(index, peerId, endpoints, publicKey, attestationDigest);
        _nodeIndices.push(index);
        _nodePos[index] = _nodeIndices.length;
        emit NodeRegistered(index, peerId, endpoints, publicKey, attestationDigest);
    }

    /// @notice Replaces the record of a registered node (same validation as registerNode).
    function updateNode(
        uint16 index,
        bytes calldata peerId,
        string[] calldata endpoints,
        bytes calldata publicKey,
        bytes32 attestationDigest
    ) external onlyOwner {
        if (_nodePos[index] == 0) revert UnknownNode(index);
        Node storage old = _nodes[index];
        delete _indexByPeerId[keccak256(old.peerId)];
        delete _indexByNodeKey[keccak256(old.publicKey)];
        _writeNode(index, peerId, endpoints, publicKey, attestationDigest);
        emit NodeUpdated(index, peerId, endpoints, publicKey, attestationDigest);
    }

    /// @notice Removes a registered node.
    function removeNode(uint16 index) external onlyOwner {
        uint256 pos = _nodePos[index];
        if (pos == 0) revert UnknownNode(index);
        Node storage old = _nodes[index];
        delete _indexByPeerId[keccak256(old.peerId)];
        delete _indexByNodeKey[keccak256(old.publicKey)];
        delete _nodes[index];
        uint256 last = _nodeIndices.length;
        if (pos != last) {
            uint16 moved = _nodeIndices[last - 1];
            _nodeIndices[pos - 1] = moved;
            _nodePos[moved] = pos;
        }
        _nodeIndices.pop();
        delete _nodePos[index];
        emit NodeRemoved(index);
    }

    // ---------------------------------------------------------------------------------------
    // Epochs and key changes
    // ---------------------------------------------------------------------------------------

    /// @notice Approves the next epoch to install `newPublicKey` as the cluster key (a fresh
    ///         DKG). Replaces any earlier pending approval.
    /// @param newPublicKey 33-byte compressed secp256k1 point, different from the current key.
    function approveKeyChange(bytes calldata newPublicKey) external onlyOwner {
        _validateKey(newPublicKey);
        bytes32 keyHash = keccak256(newPublicKey);
        if (_currentEpoch != 0 && keyHash == keccak256(_currentKey)) revert KeyUnchanged();
        _approvedKeyHash = keyHash;
        emit KeyChangeApproved(keyHash, newPublicKey);
    }

    /// @notice Withdraws the pending key-change approval.
    function cancelKeyChange() external onlyOwner {
        bytes32 keyHash = _approvedKeyHash;
        if (keyHash == bytes32(0)) revert NoKeyChangePending();
        delete _approvedKeyHash;
        emit KeyChangeCancelled(keyHash);
    }

    /// @notice Publishes a key epoch. Only the manager may call it.
    /// @param epochNumber Epoch number, greater than the current one (first epoch >= 1).
    /// @param t Threshold, 1 <= t <= n.
    /// @param n Committee size, at most the number of registered nodes.
    /// @param publicKey Cluster key (33-byte compressed point). Must equal the current key
    ///        (reshare) unless it is the genesis epoch or the owner approved exactly this key.
    /// @param publicSharesHash Hash of the public shares (non-zero).
    /// @param transcriptHash Hash of the agreed transcript (non-zero).
    function publishEpoch(
        uint64 epochNumber,
        uint16 t,
        uint16 n,
        bytes calldata publicKey,
        bytes32 publicSharesHash,
        bytes32 transcriptHash
    ) external onlyManager {
        uint64 current = _currentEpoch;
        if (epochNumber <= current) revert EpochNotIncreasing(epochNumber, current);
        if (t == 0 || t > n) revert InvalidThreshold(t, n);
        if (n > _nodeIndices.length) revert CommitteeTooLarge(n, _nodeIndices.length);
        if (publicSharesHash == bytes32(0) || transcriptHash == bytes32(0)) revert ZeroHash();
        _validateKey(publicKey);

        bytes32 keyHash = keccak256(publicKey);
        bool keyChanged = current == 0 || keyHash != keccak256(_currentKey);
        if (keyChanged && current != 0) {
            if (keyHash != _approvedKeyHash) revert KeyChangeNotApproved(keyHash);
            delete _approvedKeyHash;
        }

        Epoch storage e = _epochs[epochNumber];
        e.epoch = epochNumber;
        e.t = t;
        e.n = n;
        e.publicKey = publicKey;
        e.publicSharesHash = publicSharesHash;
        e.transcriptHash = transcriptHash;
        e.publishedAt = uint64(block.timestamp);
        _epochNumbers.push(epochNumber);
        _currentEpoch = epochNumber;

        if (keyChanged) {
            emit PublicKeyChanged(epochNumber, _currentKey, publicKey);
            _currentKey = publicKey;
        }
        emit EpochPublished(epochNumber, t, n, publicKey, publicSharesHash, transcriptHash);
    }

    // ---------------------------------------------------------------------------------------
    // Views
    // ---------------------------------------------------------------------------------------

    /// @notice Current cluster public key (33-byte compressed). Read by Nox services.
    /// @dev Reverts with NoEpochPublished before the first epoch.
    function kmsPublicKey() external view returns (bytes memory) {
        if (_currentEpoch == 0) revert NoEpochPublished();
        return _currentKey;
    }

    /// @notice Primary gateway. Read by Nox services.
    /// @dev Reverts with NoGateway when no gateway is registered.
    function gateway() external view returns (address) {
        address primary = _primaryGateway;
        if (primary == address(0)) revert NoGateway();
        return primary;
    }

    /// @notice All gateways, in registration order modulo swap-and-pop removals.
    function gateways() external view returns (address[] memory) {
        return _gateways;
    }

    /// @notice Whether `account` is a gateway.
    function isGateway(address account) external view returns (bool) {
        return _gatewayPos[account] != 0;
    }

    /// @notice All runners.
    function runners() external view returns (address[] memory) {
        return _runners;
    }

    /// @notice Whether `account` is a runner.
    function isRunner(address account) external view returns (bool) {
        return _runnerPos[account] != 0;
    }

    /// @notice The record of node `index`; reverts with UnknownNode if absent.
    function node(uint16 index) external view returns (Node memory) {
        if (_nodePos[index] == 0) revert UnknownNode(index);
        return _nodes[index];
    }

    /// @notice Whether node `index` is registered.
    function hasNode(uint16 index) external view returns (bool) {
        return _nodePos[index] != 0;
    }

    /// @notice Indices of all registered nodes.
    function nodeIndices() external view returns (uint16[] memory) {
        return _nodeIndices;
    }

    /// @notice Number of registered nodes.
    function nodeCount() external view returns (uint256) {
        return _nodeIndices.length;
    }

    /// @notice The published epoch `epochNumber`; reverts with UnknownEpoch if absent.
    function epoch(uint64 epochNumber) external view returns (Epoch memory) {
        Epoch storage e = _epochs[epochNumber];
        if (e.epoch == 0) revert UnknownEpoch(epochNumber);
        return e;
    }

    /// @notice Number of the current (latest) epoch; 0 before the first publication.
    function currentEpoch() external view returns (uint64) {
        return _currentEpoch;
    }

    /// @notice All published epoch numbers, in publication order.
    function epochNumbers() external view returns (uint64[] memory) {
        return _epochNumbers;
    }

    /// @notice keccak256 of the key approved for the next key change (zero if none).
    function approvedKeyHash() external view returns (bytes32) {
        return _approvedKeyHash;
    }

    /// @notice Whether `key` is a valid 33-byte compressed secp256k1 point (same check the
    ///         writes apply). Never reverts.
    function isValidCompressedKey(bytes calldata key) external view returns (bool) {
        if (key.length != COMPRESSED_KEY_LENGTH) return false;
        if (key[0] != 0x02 && key[0] != 0x03) return false;
        return _xOnCurve(uint256(bytes32(key[1:33])));
    }

    // ---------------------------------------------------------------------------------------
    // Internals
    // ---------------------------------------------------------------------------------------

    function _writeNode(
        uint16 index,
        bytes calldata peerId,
        string[] calldata endpoints,
        bytes calldata publicKey,
        bytes32 attestationDigest
    ) private {
        if (peerId.length == 0 || peerId.length > MAX_PEER_ID_LENGTH) revert InvalidPeerId(peerId.length);
        uint256 count = endpoints.length;
        if (count == 0 || count > MAX_ENDPOINTS) revert InvalidEndpointCount(count);
        for (uint256 i = 0; i < count; ++i) {
            uint256 len = bytes(endpoints[i]).length;
            if (len == 0 || len > MAX_ENDPOINT_LENGTH) revert InvalidEndpoint(i);
        }
        _validateKey(publicKey);

        bytes32 peerHash = keccak256(peerId);
        uint16 other = _indexByPeerId[peerHash];
        if (other != 0) revert DuplicatePeerId(other);
        bytes32 keyHash = keccak256(publicKey);
        other = _indexByNodeKey[keyHash];
        if (other != 0) revert DuplicateNodeKey(other);
        _indexByPeerId[peerHash] = index;
        _indexByNodeKey[keyHash] = index;

        Node storage rec = _nodes[index];
        rec.index = index;
        rec.peerId = peerId;
        delete rec.endpoints;
        for (uint256 i = 0; i < count; ++i) {
            rec.endpoints.push(endpoints[i]);
        }
        rec.publicKey = publicKey;
        rec.attestationDigest = attestationDigest;
    }

    function _removeAddress(
        address[] storage list,
        mapping(address => uint256) storage pos,
        address account,
        uint256 p
    ) private {
        uint256 last = list.length;
        if (p != last) {
            address moved = list[last - 1];
            list[p - 1] = moved;
            pos[moved] = p;
        }
        list.pop();
        delete pos[account];
    }

    /// @dev Reverts unless `key` is a canonical SEC1 compressed secp256k1 point.
    function _validateKey(bytes calldata key) private view {
        if (key.length != COMPRESSED_KEY_LENGTH) revert InvalidKeyLength(key.length);
        bytes1 prefix = key[0];
        if (prefix != 0x02 && prefix != 0x03) revert InvalidKeyPrefix(prefix);
        if (!_xOnCurve(uint256(bytes32(key[1:33])))) revert KeyNotOnCurve();
    }

    /// @dev True iff x < p and x^3 + 7 is a non-zero quadratic residue mod p (Euler's
    ///      criterion through the modexp precompile), i.e. x is the abscissa of a point.
    ///      (x^3 + 7 is never 0 mod p on secp256k1: the group has prime order, so no point
    ///      has y = 0.)
    function _xOnCurve(uint256 x) private view returns (bool) {
        if (x >= P) return false;
        uint256 rhs = addmod(mulmod(mulmod(x, x, P), x, P), 7, P);
        // modexp(base = rhs, exponent = (p - 1) / 2, modulus = p); each operand 32 bytes.
        bytes memory input = abi.encodePacked(uint256(32), uint256(32), uint256(32), rhs, (P - 1) / 2, P);
        (bool ok, bytes memory out) = address(0x05).staticcall(input);
        return ok && out.length == 32 && uint256(bytes32(out)) == 1;
    }
}

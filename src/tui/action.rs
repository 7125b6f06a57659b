//! Everything a person can ask of the debugger, named apart from the keys that ask it (the
//! keymap binds keys to these; the app says what each one does), so that neither of those two
//! needs the other.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Quit,
    Cancel,
    Help,
    PrevStage,
    NextStage,
    Down,
    Up,
    ToggleFocus,
    Select,
    /// The n-th prediction (0-based) becomes the target.
    Pick(usize),
    Search,
    NextMethod,
    PrevMethod,
    StageGrid,
    MethodGrid,
    CycleView,
    OpacityUp,
    OpacityDown,
    NextTheme,
    ToggleAugSmooth,
    ToggleEigenSmooth,
    Save,
}
